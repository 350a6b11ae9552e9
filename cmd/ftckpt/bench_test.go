package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/vmm/sim"
)

// benchCLI runs ftckpt with args and returns its stdout, stderr and error.
func benchCLI(args ...string) (string, string, error) {
	root := newRootCmd()
	var out, errs bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errs)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errs.String(), err
}

// TestBenchRejectsBadFlags checks each bad bench command line is refused,
// with a message that names what is wrong, before anything runs.
func TestBenchRejectsBadFlags(t *testing.T) {
	kvm := "need /dev/kvm, which cannot be opened here"
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		kvm = "--machine kvm is not built yet"
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--guest", "nosuch"}, `--guest "nosuch": the benchmarks run tick, kv or all`},
		{[]string{"bench", "--guest", "counter"}, `--guest "counter"`},
		{[]string{"bench", "--duration", "fast"}, `invalid argument "fast" for "--duration"`},
		{[]string{"bench", "--duration", "0s"}, "--duration 0s: must be at least 100ms"},
		{[]string{"bench", "--duration", "-2s"}, "--duration -2s: must be at least 100ms"},
		{[]string{"bench", "--duration", "99ms"}, "--duration 99ms: must be at least 100ms"},
		{[]string{"bench", "--epochs", ""}, `--epochs "": no epoch given`},
		{[]string{"bench", "--epochs", " , ,"}, `--epochs " , ,": no epoch given`},
		{[]string{"bench", "--epochs", "5ms,soon"}, `--epochs "5ms,soon": time: invalid duration "soon"`},
		{[]string{"bench", "--epochs", "5ms,-1ms"}, "epoch -1ms must be positive"},
		{[]string{"bench", "--epochs", "0s"}, "epoch 0s must be positive"},
		{[]string{"bench", "--machine", "qemu"}, `--machine "qemu": want sim or kvm`},
		{[]string{"bench", "--machine", "kvm"}, kvm},
		{[]string{"bench", "now"}, `unknown command "now"`},
	} {
		start := time.Now()
		_, _, err := benchCLI(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ftckpt %q: error %v, want it to say %q", tc.args, err, tc.want)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("ftckpt %q took %v to refuse: it ran something", tc.args, d)
		}
	}
}

// TestBenchTable runs a short bench of every guest and checks the table:
// every configuration has its row, each row's numbers are there and
// plausible (the guest ran; a replicated run shipped bytes; the kv load
// got replies; checkpoint mode paused), and progress went to stderr.
func TestBenchTable(t *testing.T) {
	out, progress, err := benchCLI("bench", "--duration", "200ms", "--epochs", "5ms,25ms,100ms")
	if err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, out, progress)
	}
	t.Logf("\n%s", out)
	rows := []string{"unprotected", "replay", "checkpoint 5ms", "checkpoint 25ms", "checkpoint 100ms", "unprotected, again"}
	tables := strings.Split(out, "\nguest ")
	if len(tables) != 2 || !strings.HasPrefix(tables[0], "guest tick: ") || !strings.HasPrefix(tables[1], "kv: ") {
		t.Fatalf("want a tick table, then a kv table:\n%s", out)
	}
	for i, guest := range []string{"tick", "kv"} {
		for _, name := range rows {
			f := benchRow(t, tables[i], name)
			if f == nil {
				t.Errorf("%s: no row %q", guest, name)
				continue
			}
			num := func(col int) float64 {
				v, err := strconv.ParseFloat(strings.TrimSuffix(f[col], "x"), 64)
				if err != nil {
					t.Errorf("%s, %s: column %d is %q: %v", guest, name, col, f[col], err)
				}
				return v
			}
			replicated := !strings.HasPrefix(name, "unprotected")
			if num(colInstr) <= 0 || num(colSlowdown) <= 0 {
				t.Errorf("%s, %s: %s Minstr/s, slowdown %s", guest, name, f[colInstr], f[colSlowdown])
			}
			if replicated && (num(colWire) <= 0 || num(colPerInstr) <= 0) || !replicated && (f[colWire] != "-" || f[colPerInstr] != "-") {
				t.Errorf("%s, %s: wire %s MB/s, %s bytes/instr", guest, name, f[colWire], f[colPerInstr])
			}
			if guest == "kv" && num(colReqs) <= 0 || guest == "tick" && f[colReqs] != "-" {
				t.Errorf("%s, %s: %s req/s", guest, name, f[colReqs])
			}
			if d, err := time.ParseDuration(f[colOutput]); err != nil || d < 0 {
				t.Errorf("%s, %s: output p50 %q", guest, name, f[colOutput])
			}
			if strings.HasPrefix(name, "checkpoint") {
				if d, err := time.ParseDuration(f[colPause]); err != nil || d <= 0 {
					t.Errorf("%s, %s: pause p50 %q", guest, name, f[colPause])
				}
			} else if f[colPause] != "-" {
				t.Errorf("%s, %s: pause p50 %q without checkpoints", guest, name, f[colPause])
			}
			if name == "replay" {
				num(colLandings)
				if num(colBackup) <= 0 {
					t.Errorf("%s, replay: the backup replayed %s Minstr/s", guest, f[colBackup])
				}
			} else if f[colBackup] != "-" || f[colLandings] != "-" || f[colVisits] != "-" {
				t.Errorf("%s, %s: backup %q, landings %q, visits %q without replay", guest, name, f[colBackup], f[colLandings], f[colVisits])
			}
			if !strings.Contains(progress, "ftckpt bench: "+guest+", "+name+" for 200ms ...") {
				t.Errorf("no progress line for %s, %s", guest, name)
			}
		}
	}
}

// The table's columns after the configuration's name.
const (
	colInstr = iota
	colSlowdown
	colBackup
	colWire
	colPerInstr
	colReqs
	colOutput
	colLandings
	colVisits
	colPause
	numCols
)

// benchRow returns the numCols values of the table's row for configuration
// name, or nil.
func benchRow(t *testing.T, table, name string) []string {
	for _, line := range strings.Split(table, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), name+" ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if _, err := strconv.ParseFloat(f[0], 64); err != nil {
			continue // "unprotected" is a prefix of "unprotected, again"
		}
		if len(f) != numCols {
			t.Errorf("row %q has %d values: %q", name, len(f), line)
			return nil
		}
		return f
	}
	return nil
}

// BenchmarkModes runs each guest unprotected, under replay mode and under
// checkpoint mode at 5, 25 and 100 ms epochs, each for b.N seconds once in
// sync (make bench: one second). The floor is the unprotected run the
// guest's benchmark measures first; the "unprotected" case measures it
// again, so its x-slowdown shows the host's noise.
func BenchmarkModes(b *testing.B) {
	ctx := context.Background()
	for _, w := range benchWorkloads {
		b.Run("guest="+w.guest, func(b *testing.B) {
			floor, err := benchRun(ctx, w, benchConfig{mode: "unprotected"}, time.Second)
			if err != nil {
				b.Fatal(err)
			}
			configs := []benchConfig{{mode: "unprotected"}, {mode: "replay"}}
			for _, e := range []time.Duration{5 * time.Millisecond, 25 * time.Millisecond, 100 * time.Millisecond} {
				configs = append(configs, benchConfig{mode: "checkpoint", epoch: e})
			}
			for _, c := range configs {
				name := c.mode
				if c.mode == "checkpoint" {
					name += "=" + c.epoch.String()
				}
				b.Run(name, func(b *testing.B) {
					r, err := benchRun(ctx, w, c, time.Duration(b.N)*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(r.instrPerSec()/1e6, "Minstr/s")
					b.ReportMetric(floor.instrPerSec()/max(r.instrPerSec(), 1e-9), "x-slowdown")
					if c.mode != "unprotected" {
						b.ReportMetric(r.wirePerSec(), "wireB/s")
						b.ReportMetric(r.bytesPerInstr(), "B/instr")
					}
					if w.guest == "kv" {
						b.ReportMetric(r.repliesPerSec(), "req/s")
					}
					if len(r.latency) > 0 {
						b.ReportMetric(float64(r.latencyP50().Microseconds()), "out-p50-µs")
					}
					switch c.mode {
					case "replay":
						b.ReportMetric(r.backupInstrPerSec()/1e6, "backup-Minstr/s")
						b.ReportMetric(r.landingsPerSec(), "landings/s")
						b.ReportMetric(r.visitsPerLanding(), "visits/landing")
					case "checkpoint":
						b.ReportMetric(float64(benchP50(r.pauses).Microseconds()), "pause-p50-µs")
					}
				})
			}
		})
	}
}

// BenchmarkEpochPause is checkpoint mode's pause against the pages it
// finds dirty: the tick guest walks over 4 to 128 pages while 10 ms epochs
// are taken, for b.N seconds each (make bench: one). The pause splits in
// two: stopping the vCPU (here a goroutine of the software machine; on KVM
// a kick and an exit per vCPU), and the work once it stands still
// (harvest, copy the dirty pages aside, save the state), which the floor
// measured in the same run, one memcpy of that many pages, is beside.
func BenchmarkEpochPause(b *testing.B) {
	ctx := context.Background()
	for _, pages := range []uint64{4, 16, 64, 128} {
		b.Run(fmt.Sprintf("work-pages=%d", pages), func(b *testing.B) {
			w := benchWorkload{guest: "tick", params: []sim.Param{
				{Name: "period_ns", Value: 200_000}, {Name: "work", Value: 5000},
				{Name: "every", Value: 5}, {Name: "work_pages", Value: pages}}}
			r, err := benchRun(ctx, w, benchConfig{mode: "checkpoint", epoch: 10 * time.Millisecond}, time.Duration(b.N)*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if len(r.pauses) == 0 {
				b.Fatal("no pause in the window")
			}
			floor := memcpyPages(int(r.dirtyPerPause + 0.5))
			work := benchP50(r.pauseWork)
			b.ReportMetric(r.dirtyPerPause, "dirty-pages")
			b.ReportMetric(micros(benchP50(r.pauses)), "pause-p50-µs")
			b.ReportMetric(micros(work), "work-p50-µs")
			b.ReportMetric(micros(floor), "memcpy-µs")
			b.ReportMetric(float64(work)/float64(max(floor, 1)), "work-x-memcpy")
		})
	}
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// memcpyPages is the floor of a pause: the best of 200 copies of n pages
// between two buffers already faulted in.
func memcpyPages(n int) time.Duration {
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
