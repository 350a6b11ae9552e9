package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot writes the charts of one run into dir, each as PNG and SVG:
// slowdown-GUEST and delay-GUEST (against the checkpoint epoch, replay's as
// a line), wire-GUEST (bytes shipped per unit of progress, by
// configuration), and pause (checkpoint mode's pause against the dirty
// pages, beside the memcpy floor of as many pages, measured now).
func Plot(dir string, p Plan, results [][]*Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Pauses by Config.Copy (the default, always after resuming, in the
	// pause).
	var pausePts [3]plotter.XYs
	var floorPts plotter.XYs
	for i, w := range p.Workloads {
		rs := results[i]
		floor := floorRate(rs)
		var slow, delay plotter.XYs
		var replaySlow, replayDelay float64
		hasReplay := false
		for _, r := range rs {
			switch r.Config.Mode {
			case "checkpoint":
				if len(r.Pauses) > 0 {
					m := ckmode.PauseMedian(r.Pauses)
					pt := plotter.XY{X: float64(m.Dirty), Y: ms2(ckmode.PauseQuantile(r.Pauses, 0.5))}
					pausePts[r.Config.Copy] = append(pausePts[r.Config.Copy], pt)
					floorPts = append(floorPts, plotter.XY{X: float64(m.Dirty), Y: ms2(MemcpyPages(m.Dirty))})
				}
				if r.Config.Copy != ckmode.CopyAuto {
					continue // the lines against the epoch are the default behaviour's
				}
				ms := float64(r.Config.Epoch) / float64(time.Millisecond)
				slow = append(slow, plotter.XY{X: ms, Y: floor / max(r.Rate(), 1e-9)})
				delay = append(delay, plotter.XY{X: ms, Y: float64(r.OutputP50) / float64(time.Millisecond)})
			case "replay":
				replaySlow, replayDelay, hasReplay = floor/max(r.Rate(), 1e-9), float64(r.OutputP50)/float64(time.Millisecond), true
			}
		}
		title := fmt.Sprintf("%s on %s", w.Guest, p.Machine)
		if err := lineChart(dir, "slowdown-"+w.Guest, title, "checkpoint epoch (ms)", "slowdown (× the unprotected run)",
			slow, hasReplay, replaySlow); err != nil {
			return err
		}
		if err := lineChart(dir, "delay-"+w.Guest, title, "checkpoint epoch (ms)", "output delay p50 (ms)",
			delay, hasReplay, replayDelay); err != nil {
			return err
		}
		if err := wireChart(dir, w, rs); err != nil {
			return err
		}
	}
	if len(floorPts) == 0 {
		return nil
	}
	pl := plot.New()
	pl.Title.Text = fmt.Sprintf("checkpoint pause on %s", p.Machine)
	pl.X.Label.Text = "dirty pages per epoch (p50)"
	pl.Y.Label.Text = "ms"
	// One call per kind of plotter, so each series gets its own colour and
	// shape (plotutil numbers them within a call).
	names := [...]string{ckmode.CopyAuto: "pause p50", ckmode.CopyAlways: "pause p50, pages always copied after the resume",
		ckmode.CopyNever: "pause p50, the pause copying the pages"}
	var scatters []any
	for c, name := range names {
		if len(pausePts[c]) > 0 {
			scatters = append(scatters, name, sorted(pausePts[c]))
		}
	}
	if err := plotutil.AddScatters(pl, scatters...); err != nil {
		return err
	}
	line, points, err := plotter.NewLinePoints(sorted(floorPts))
	if err != nil {
		return err
	}
	line.Color, points.Color, points.Shape = plotutil.Color(2), plotutil.Color(2), plotutil.Shape(2)
	pl.Add(line, points)
	pl.Legend.Add("memcpy of the pages", line, points)
	return save(pl, dir, "pause")
}

// lineChart plots ys against the epoch, with a horizontal line for replay
// mode's value if there is one.
func lineChart(dir, name, title, x, y string, pts plotter.XYs, withReplay bool, replay float64) error {
	pl := plot.New()
	pl.Title.Text, pl.X.Label.Text, pl.Y.Label.Text = title, x, y
	pl.Legend.Top, pl.Legend.Left = true, true
	if err := plotutil.AddLinePoints(pl, "checkpoint mode", sorted(pts)); err != nil {
		return err
	}
	if withReplay && len(pts) > 0 {
		lo, hi := pts[0].X, pts[0].X
		for _, p := range pts {
			lo, hi = min(lo, p.X), max(hi, p.X)
		}
		l, err := plotter.NewLine(plotter.XYs{{X: lo, Y: replay}, {X: hi, Y: replay}})
		if err != nil {
			return err
		}
		l.Color, l.Dashes = plotutil.Color(1), []vg.Length{vg.Points(4), vg.Points(2)}
		pl.Add(l)
		pl.Legend.Add("replay mode", l)
	}
	return save(pl, dir, name)
}

// wireChart is a bar per replicated configuration: bytes shipped per unit
// of the guest's progress.
func wireChart(dir string, w Workload, rs []*Result) error {
	var vals plotter.Values
	var names []string
	for _, r := range rs {
		if r.Config.Mode == "unprotected" {
			continue
		}
		vals = append(vals, float64(r.Wire)/max(float64(r.Progress), 1))
		names = append(names, r.Config.String())
	}
	if len(vals) == 0 {
		return nil
	}
	pl := plot.New()
	pl.Title.Text = "wire bytes per " + singular(rs[0].Unit) + ", " + w.Guest
	pl.Y.Label.Text = "bytes / " + singular(rs[0].Unit)
	bars, err := plotter.NewBarChart(vals, vg.Points(30))
	if err != nil {
		return err
	}
	pl.Add(bars)
	pl.NominalX(names...)
	return save(pl, dir, "wire-"+w.Guest)
}

func save(pl *plot.Plot, dir, name string) error {
	for _, ext := range []string{".png", ".svg"} {
		if err := pl.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(dir, name+ext)); err != nil {
			return fmt.Errorf("writing %s%s: %w", name, ext, err)
		}
	}
	return nil
}

// sorted returns pts by X.
func sorted(pts plotter.XYs) plotter.XYs {
	out := slices.Clone(pts)
	slices.SortFunc(out, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
	return out
}

func ms2(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// WriteJSON writes the raw figures of a run to path, for other tools: the
// machine, its vCPUs and the measured window asked for, then per
// workload, per configuration, the window and every measured figure.
func WriteJSON(path string, p Plan, results [][]*Result) error {
	type row struct {
		Config      string
		Seconds     float64
		Progress    uint64
		Unit        string
		WireBytes   uint64
		Replies     uint64
		RoundTrips  []time.Duration
		OutputP50   time.Duration
		Landings    uint64
		Visits      uint64
		LogEntries  uint64
		Replayed    uint64
		Pauses      []ckmode.Pause
		MemcpyFloor time.Duration `json:",omitempty"`
		Lapse       string        `json:",omitempty"`
		Said        []string      `json:",omitempty"`
	}
	type workload struct {
		Guest   string
		About   string
		Params  map[string]string
		Results []row
	}
	out := struct {
		Machine   string
		VCPUs     int // checkpoint mode's (replay runs one)
		Duration  time.Duration
		Workloads []workload
	}{Machine: p.Machine.String(), VCPUs: p.VCPUs, Duration: p.Duration}
	for i, w := range p.Workloads {
		wl := workload{Guest: w.Guest, About: w.About, Params: w.Params}
		for _, r := range results[i] {
			x := row{Config: r.Config.String(), Seconds: r.Secs, Progress: r.Progress, Unit: r.Unit, WireBytes: r.Wire,
				Replies: r.Replies, RoundTrips: r.RoundTrips, OutputP50: r.OutputP50, Landings: r.Landings, Visits: r.Visits,
				LogEntries: r.Logged, Replayed: r.Replayed, Pauses: r.Pauses, Lapse: r.Lapse, Said: r.Said}
			if len(r.Pauses) > 0 {
				x.MemcpyFloor = MemcpyPages(ckmode.PauseMedian(r.Pauses).Dirty)
			}
			wl.Results = append(wl.Results, x)
		}
		out.Workloads = append(out.Workloads, wl)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
