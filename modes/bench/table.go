package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
)

// Print writes one workload's tables: every configuration's progress and
// costs, then checkpoint mode's pauses in their parts beside the memcpy
// floor of the median dirty pages, measured now. A configuration whose
// backup's protection lapsed in its window is marked, and why said below.
func Print(out io.Writer, w Workload, results []*Result) {
	if len(results) == 0 {
		return
	}
	u := results[0].Unit
	floor := floorRate(results)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "configuration\t%s/s\tslowdown\tbackup pace\twire MB/s\tbytes/%s\treq/s\treply p50\toutput p50\tlandings/s\tvisits/landing\t\n", u, singular(u))
	for _, r := range results {
		rp, replicated := r.Config.Mode == "replay", r.Config.Mode != "unprotected"
		fmt.Fprintf(tw, "%s\t%s\t%sx\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name(r),
			fig(r.Rate()), dash(r.Rate() > 0, ratio(floor/r.Rate())),
			dash(rp && r.Logged > 0, fmt.Sprintf("%.0f%%", 100*float64(r.Replayed)/float64(r.Logged))),
			dash(replicated, fig(float64(r.Wire)/1e6/r.Secs)),
			dash(replicated, fig(float64(r.Wire)/max(float64(r.Progress), 1))),
			dash(w.Guest == "kv", fig(float64(r.Replies)/r.Secs)),
			dash(len(r.RoundTrips) > 0, round(p50(r.RoundTrips))),
			dash(replicated, round(r.OutputP50)),
			dash(rp, fig(float64(r.Landings)/r.Secs)),
			dash(rp && r.AllLandings > 0, fig(float64(r.Visits)/max(float64(r.AllLandings), 1))))
	}
	tw.Flush()
	for _, r := range results {
		if r.Lapse != "" {
			fmt.Fprintf(out, "%s %v: %s, in this measurement and the one before (the progress output says why)\n", lapseMark, r.Config, r.Lapse)
		}
	}
	var ck []*Result
	for _, r := range results {
		if len(r.Pauses) > 0 {
			ck = append(ck, r)
		}
	}
	if len(ck) == 0 {
		return
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "checkpoint pauses\tepochs\tdirty p50\tpause p50\tp99\tstop\tharvest\tcopy\tstate\tresume\tmemcpy floor\tpause/floor\tcopied after resume\t")
	for _, r := range ck {
		m := ckmode.PauseMedian(r.Pauses)
		p := ckmode.PauseQuantile(r.Pauses, 0.5)
		floor := MemcpyPages(m.Dirty)
		deferred := 0
		for _, pause := range r.Pauses {
			if pause.Deferred {
				deferred++
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d%%\t\n", name(r), len(r.Pauses), m.Dirty,
			round(p), round(ckmode.PauseQuantile(r.Pauses, 0.99)),
			round(m.Stop), round(m.Harvest), round(m.Copy), round(m.State), round(m.Resume),
			round(floor), dash(floor > 0, ratio(float64(p)/float64(floor))), 100*deferred/len(r.Pauses))
	}
	tw.Flush()
}

// lapseMark marks a configuration whose backup's protection lapsed.
const lapseMark = "(!)"

// name is r's configuration as a table row names it.
func name(r *Result) string {
	if r.Lapse != "" {
		return r.Config.String() + " " + lapseMark
	}
	return r.Config.String()
}

// MemcpyPages is the floor of a pause: the best of 200 copies of n pages
// between two buffers already faulted in, measured now.
func MemcpyPages(n int) time.Duration {
	if n == 0 {
		return 0
	}
	src, dst := make([]byte, n*format.PageSize), make([]byte, n*format.PageSize)
	for i := range src {
		src[i] = byte(i)
	}
	copy(dst, src)
	best := time.Duration(math.MaxInt64)
	for range 200 {
		start := time.Now()
		copy(dst, src)
		best = min(best, time.Since(start))
	}
	return best
}

// floorRate is the mean progress rate of the unprotected runs.
func floorRate(results []*Result) float64 {
	sum, n := 0.0, 0
	for _, r := range results {
		if r.Config.Mode == "unprotected" {
			sum += r.Rate()
			n++
		}
	}
	return sum / float64(max(n, 1))
}

func singular(u string) string {
	switch u {
	case "replies":
		return "reply"
	case "pages":
		return "page"
	}
	return u
}

func dash(ok bool, s string) string {
	if !ok {
		return "-"
	}
	return s
}

func p50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// ratio shows a ratio with two decimals, or fewer once large.
func ratio(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// fig shows v with three significant figures or more, in millions past
// ten million.
func fig(v float64) string {
	switch {
	case v >= 10e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	case v == 0:
		return "0"
	}
	return fmt.Sprintf("%.3g", v)
}

func round(d time.Duration) string {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}
