package bench

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/vmm"
)

// machines are the machines the benchmarks run on here: the software one,
// and KVM where /dev/kvm opens.
func machines() []node.Machine {
	if vmm.Available() {
		return []node.Machine{node.MachineSim, node.MachineKVM}
	}
	return []node.Machine{node.MachineSim}
}

// BenchmarkModes runs each workload unprotected, under replay mode and
// under checkpoint mode at 5, 25 and 100 ms epochs, each for b.N seconds
// once in sync (make bench: one second), on each machine. The floor is the
// unprotected run the workload's benchmark measures first.
func BenchmarkModes(b *testing.B) {
	ctx := context.Background()
	for _, m := range machines() {
		for _, w := range Workloads(m, DefaultMemtouchPages, 1) {
			b.Run(fmt.Sprintf("machine=%s/guest=%s", machineName(m), w.Guest), func(b *testing.B) {
				p := Plan{Machine: m, VCPUs: 1, Duration: time.Second}
				floor, err := runConfig(ctx, p, w, Config{Mode: "unprotected"})
				if err != nil {
					b.Fatal(err)
				}
				configs := []Config{{Mode: "unprotected"}, {Mode: "replay"}}
				for _, e := range []time.Duration{5 * time.Millisecond, 25 * time.Millisecond, 100 * time.Millisecond} {
					configs = append(configs, Config{Mode: "checkpoint", Epoch: e})
				}
				for _, c := range configs {
					name := c.Mode
					if c.Mode == "checkpoint" {
						name += "=" + c.Epoch.String()
					}
					b.Run(name, func(b *testing.B) {
						p.Duration = time.Duration(b.N) * time.Second
						r, err := runConfig(ctx, p, w, c)
						if err != nil {
							b.Fatal(err)
						}
						b.ReportMetric(r.Rate(), r.Unit+"/s")
						b.ReportMetric(floor.Rate()/max(r.Rate(), 1e-9), "x-slowdown")
						if c.Mode != "unprotected" {
							b.ReportMetric(float64(r.Wire)/r.Secs, "wireB/s")
						}
						if len(r.RoundTrips) > 0 {
							b.ReportMetric(float64(p50(r.RoundTrips).Microseconds()), "reply-p50-µs")
						}
						if len(r.Pauses) > 0 {
							b.ReportMetric(float64(ckmode.PauseQuantile(r.Pauses, 0.5).Microseconds()), "pause-p50-µs")
						}
					})
				}
			})
		}
	}
}

// BenchmarkCheckpointPause is checkpoint mode's pause against the pages it
// finds dirty, beside the floor measured in the same run (a memcpy of as
// many pages), with 25 ms epochs for b.N seconds each: on the software
// machine the tick guest walking 4 to 128 pages per tick; on KVM memtouch
// dirtying 1,024 to 32,768 pages per pass, with 1 and 4 vCPUs.
func BenchmarkCheckpointPause(b *testing.B) {
	ctx := context.Background()
	type point struct {
		m     node.Machine
		vcpus int
		w     Workload
		name  string
	}
	var points []point
	for _, pages := range []int{4, 16, 64, 128} {
		points = append(points, point{node.MachineSim, 1, Workload{Guest: "tick", Params: map[string]string{
			"period_ns": "200000", "work": "5000", "every": "5", "work_pages": fmt.Sprint(pages)}},
			fmt.Sprintf("machine=sim/work-pages=%d", pages)})
	}
	if vmm.Available() {
		for _, vcpus := range []int{1, 4} {
			for _, pages := range []int{1024, 8192, 32768} {
				points = append(points, point{node.MachineKVM, vcpus, Workload{Guest: "memtouch", Params: map[string]string{
					"ws": fmt.Sprint(pages), "dirty": fmt.Sprint(pages), "every": "1"}},
					fmt.Sprintf("machine=kvm/vcpus=%d/pages=%d", vcpus, pages)})
			}
		}
	}
	for _, pt := range points {
		b.Run(pt.name, func(b *testing.B) {
			p := Plan{Machine: pt.m, VCPUs: pt.vcpus, Duration: time.Duration(b.N) * time.Second}
			r, err := runConfig(ctx, p, pt.w, Config{Mode: "checkpoint", Epoch: 25 * time.Millisecond})
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Pauses) == 0 {
				b.Fatal("no pause in the window")
			}
			m := ckmode.PauseMedian(r.Pauses)
			pause := ckmode.PauseQuantile(r.Pauses, 0.5)
			floor := MemcpyPages(m.Dirty)
			us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
			b.ReportMetric(float64(m.Dirty), "dirty-pages")
			b.ReportMetric(us(pause), "pause-p50-µs")
			b.ReportMetric(us(ckmode.PauseQuantile(r.Pauses, 0.99)), "pause-p99-µs")
			b.ReportMetric(us(m.Stop), "stop-µs")
			b.ReportMetric(us(m.Harvest), "harvest-µs")
			b.ReportMetric(us(m.Copy), "copy-µs")
			b.ReportMetric(us(m.State), "state-µs")
			b.ReportMetric(us(m.Resume), "resume-µs")
			b.ReportMetric(us(floor), "memcpy-µs")
			b.ReportMetric(float64(pause)/float64(max(floor, 1)), "pause-x-memcpy")
		})
	}
}

func machineName(m node.Machine) string {
	if m == node.MachineSim {
		return "sim"
	}
	return "kvm"
}

// TestRunLeavesOutReplayWhereItCannotRun: a workload replay cannot run
// (memtouch with writers on several vCPUs) gets no replay row, and the
// progress says why; with one writer replay runs. (ftckpt's
// TestBenchRejectsBadFlags has the writers that the plan refuses.)
func TestRunLeavesOutReplayWhereItCannotRun(t *testing.T) {
	p, err := NewPlan(Request{Machine: node.MachineKVM, Guest: "memtouch", Epochs: "25ms", VCPUs: 4, Duration: time.Second,
		MemtouchPages: DefaultMemtouchPages, MemtouchWriters: 4})
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Workloads[0].Params["writers"]; got != "4" {
		t.Fatalf("memtouch's writers param is %q, want 4", got)
	}
	p.Configs = []Config{{Mode: "replay"}}
	var progress strings.Builder
	results, err := Run(context.Background(), p, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 1 || len(results[0]) != 0 {
		t.Fatalf("results %v: want memtouch's, without a replay row", results)
	}
	if want := "memtouch, replay: left out: replay runs one vCPU, memtouch's 4 writers need 4"; !strings.Contains(progress.String(), want) {
		t.Errorf("progress %q does not say %q", progress.String(), want)
	}
	one, err := NewPlan(Request{Machine: node.MachineKVM, Guest: "memtouch", Epochs: "25ms", VCPUs: 4, Duration: time.Second,
		MemtouchPages: DefaultMemtouchPages, MemtouchWriters: 1})
	if err != nil {
		t.Fatal(err)
	}
	if one.Workloads[0].NoReplay != "" {
		t.Errorf("one writer: replay left out (%s)", one.Workloads[0].NoReplay)
	}
}

// TestRunSaysWhenTheBackupIsLostInTheWindow: a configuration whose backup
// is lost while it is measured (detached by the operator, each time) is
// measured again, then kept with its row marked and the primary's log of
// the loss beside it.
func TestRunSaysWhenTheBackupIsLostInTheWindow(t *testing.T) {
	p, err := NewPlan(Request{Machine: node.MachineSim, Guest: "tick", Epochs: "25ms", VCPUs: 1, Duration: 300 * time.Millisecond,
		MemtouchPages: DefaultMemtouchPages, MemtouchWriters: 1})
	if err != nil {
		t.Fatal(err)
	}
	p.Configs = []Config{{Mode: "checkpoint", Epoch: 25 * time.Millisecond}, {Mode: "replay"}}
	windows := 0
	testHookWindow = func(primary, _ *node.Node) {
		windows++
		if _, err := primary.Do(node.Request{V: node.ControlVersion, Op: "detach-backup"}); err != nil {
			t.Errorf("detach-backup: %v", err)
		}
	}
	defer func() { testHookWindow = nil }()
	var progress strings.Builder
	results, err := Run(context.Background(), p, &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	if windows != 4 {
		t.Errorf("%d windows measured, want 4 (each configuration twice)", windows)
	}
	for _, r := range results[0] {
		if r.Lapse != "the backup was lost in the window" || !slices.ContainsFunc(r.Said, func(s string) bool {
			return strings.Contains(s, "node=primary") && strings.Contains(s, "detached by the operator")
		}) {
			t.Errorf("%v: lapse %q, the nodes said %q", r.Config, r.Lapse, r.Said)
		}
		// r is the second measurement: the first's log is its own.
		for _, want := range []string{
			fmt.Sprintf("tick, %v: %s; measuring it again\n    level=WARN", r.Config, r.Lapse),
			fmt.Sprintf("tick, %v: %s again; its row is marked\n%s", r.Config, r.Lapse, indent(r.Said)),
		} {
			if !strings.Contains(progress.String(), want) {
				t.Errorf("progress does not say %q:\n%s", want, progress.String())
			}
		}
	}
	var table strings.Builder
	Print(&table, p.Workloads[0], results[0])
	for _, want := range []string{"checkpoint 25ms (!)", "replay (!)", "(!) replay: the backup was lost in the window, in this"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the table does not say %q:\n%s", want, table.String())
		}
	}
	t.Logf("\n%s\n%s", progress.String(), table.String())
}
