package node

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/vmm"
)

// BenchmarkCheckpointTLS is what mutual TLS costs checkpoint mode, in the
// same run: a primary and a backup node on loopback replicate the same
// guest in plain TCP and in TLS, one after the other, each for b.N seconds
// once in sync, with 25 ms epochs; it reports for each the epoch pause
// (p50, p99), the checkpoint bytes shipped per second, the epochs
// acknowledged per second, and TLS's over plain's. On KVM memtouch
// rewrites 2,048 pages per pass, 16 bytes of each (small: compressible) or
// all of them (full: every byte crosses the wire); on the software machine
// the tick guest walks 64 pages per tick.
func BenchmarkCheckpointTLS(b *testing.B) {
	type load struct {
		name    string
		machine Machine
		guest   string
		memory  int64
		params  map[string]string
	}
	loads := []load{{"sim/tick", MachineSim, "tick", 1 << 20,
		map[string]string{"period_ns": "200000", "work": "5000", "every": "5", "work_pages": "64"}}}
	if vmm.Available() {
		for _, mode := range []string{"small", "full"} {
			loads = append(loads, load{"kvm/memtouch-" + mode, MachineKVM, "memtouch", 32 << 20,
				map[string]string{"ws": "2048", "dirty": "2048", "every": "1000", "mode": mode}})
		}
	}
	ca, err := mtls.NewCA("bench CA", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	pid, err := ca.Identity("primary")
	if err != nil {
		b.Fatal(err)
	}
	bid, err := ca.Identity("backup")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range loads {
		b.Run(l.name, func(b *testing.B) {
			window := time.Duration(b.N) * time.Second
			var res [2]linkResult
			for i, ids := range [2][2]*mtls.Identity{{nil, nil}, {pid, bid}} {
				o := DefaultOptions()
				o.Mode, o.Machine, o.Guest, o.Memory, o.Params = ModeCheckpoint, l.machine, l.guest, l.memory, l.params
				o.Net, o.Disk = "none", ""
				o.Arbiter = "disk:" + filepath.Join(b.TempDir(), "lease")
				o.Checkpoint.Epoch = 25 * time.Millisecond
				o.Log, o.StatusEvery = slog.New(slog.DiscardHandler), 0
				res[i] = measureLink(b, o, ids[0], ids[1], window)
			}
			plain, tls := res[0], res[1]
			b.ReportMetric(us(plain.p50), "plain-pause-p50-µs")
			b.ReportMetric(us(tls.p50), "tls-pause-p50-µs")
			b.ReportMetric(us(plain.p99), "plain-pause-p99-µs")
			b.ReportMetric(us(tls.p99), "tls-pause-p99-µs")
			b.ReportMetric(plain.mbps, "plain-MB/s")
			b.ReportMetric(tls.mbps, "tls-MB/s")
			b.ReportMetric(plain.acked, "plain-acked/s")
			b.ReportMetric(tls.acked, "tls-acked/s")
			b.ReportMetric(float64(tls.p50)/float64(max(plain.p50, 1)), "pause-tls/plain")
			b.ReportMetric(tls.mbps/max(plain.mbps, 1e-9), "MB/s-tls/plain")
		})
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// linkResult is one transport's measurement.
type linkResult struct {
	p50, p99    time.Duration
	mbps, acked float64
}

// measureLink runs a checkpoint pair of o, the primary with identity p and
// the backup with bk (nil, nil: plain TCP), and measures it over window
// once the backup has committed.
func measureLink(b *testing.B, o Options, p, bk *mtls.Identity, window time.Duration) linkResult {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bo := o
	bo.Role, bo.Listen, bo.TLS = RoleBackup, "127.0.0.1:0", bk
	addr := make(chan string, 1)
	bo.Ready = func(a string) { addr <- a }
	backup, err := Start(ctx, bo)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { cancel(); backup.Wait() }()
	o.Role, o.TLS = RolePrimary, p
	select {
	case o.Peer = <-addr:
	case <-backup.Done():
		b.Fatalf("the backup ended: %v", backup.Wait())
	}
	primary, err := Start(ctx, o)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { cancel(); primary.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if bp := backup.Parts().CheckpointBackup; bp != nil && bp.Status().State == format.StateCommitted && bp.Status().Epoch > 10 {
			break
		}
		select {
		case <-primary.Done():
			b.Fatalf("the primary ended: %v", primary.Wait())
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatal("the backup was not in sync after a minute")
		}
	}
	stats := primary.Parts().CheckpointPrimary.Stats
	from := time.Now()
	_, acked0, shipped0, _, _ := stats.Counters()
	time.Sleep(window)
	to := time.Now()
	_, acked1, shipped1, _, _ := stats.Counters()
	pauses := stats.Pauses(from, to)
	if len(pauses) == 0 {
		b.Fatal("no pause in the window")
	}
	secs := to.Sub(from).Seconds()
	return linkResult{
		p50:   ckmode.PauseQuantile(pauses, 0.5),
		p99:   ckmode.PauseQuantile(pauses, 0.99),
		mbps:  float64(shipped1-shipped0) / secs / 1e6,
		acked: float64(acked1-acked0) / secs,
	}
}
