package replay_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// precopyConfig pre-copies a few pages at a time, so that a pass over the
// test guest's memory takes many boundaries.
func precopyConfig() replay.Config {
	cfg := testConfig()
	cfg.PrecopyChunk, cfg.PrecopyDone, cfg.PrecopyRounds = 2, 1, 4
	return cfg
}

// TestPrecopyWhileTheGuestRuns attaches a backup to a busy tick guest:
// its full checkpoint goes in round messages of two pages while the guest
// runs; the final stop carries what was written since; the backup then
// follows, and after the primary stops it holds exactly the primary's
// machine.
func TestPrecopyWhileTheGuestRuns(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	c.cfg = precopyConfig()
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	bm, b, done, _ := c.attachBackup(p, "backup") // checkTicks allows its repeats at the boundary
	vmmtest.WaitUntil(t, "the sync's commit", func() bool { return p.Stats.Syncs.Load() >= 1 })
	// More pages than the guest has: a later pass sent again pages the
	// guest wrote while the first ran.
	if n := p.Stats.Precopied.Load(); n <= testPages {
		t.Errorf("%d pages went in rounds, for a guest of %d: it did not run during the pre-copy", n, testPages)
	}
	vmmtest.WaitUntil(t, "the backup in sync", func() bool { return b.Stats.Applied.Load() >= 1 })
	if r := b.Stats.Rounds.Load(); r < testPages/2 {
		t.Errorf("the backup applied %d rounds, want at least %d", r, testPages/2)
	}
	c.client.waitFrames(t, len(c.client.seen())+5) // recorded and replayed a while
	c.stopPrimary()
	r := vmmtest.Receive(t, "the backup to take over", done)
	if r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
	checkTicks(t, c.client.seen())
}

// TestStopDuringPrecopyHandsOver: the primary is stopped (as by SIGTERM)
// while a backup attaching is pre-copying a busy guest's full checkpoint,
// a pre-copy that would not end by itself here (the tick guest writes more
// pages than it may leave for the final stop). The rest of the checkpoint
// goes in the primary's last stop, and the backup takes over where the
// guest stopped, holding exactly the primary's machine.
func TestStopDuringPrecopyHandsOver(t *testing.T) {
	c := endlessPrecopyCluster(t)
	p, _ := stopDuringPrecopy(t, c, func(_ *replay.Primary, b *replay.Backup) bool { return b.Stats.Rounds.Load() >= 5 })
	if n := p.Stats.Syncs.Load(); n != 1 {
		t.Errorf("the primary sent %d full checkpoints, want the pre-copied one", n)
	}
}

// TestStopBeforeTheFirstRoundHandsOver: as TestStopDuringPrecopyHandsOver,
// but the backup offered its memory's hashes and they do not come, so no
// round has gone when the primary is stopped: its last stop copies the
// whole full checkpoint, and the backup takes over.
func TestStopBeforeTheFirstRoundHandsOver(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	c.attachHolds = true
	c.down = linktest.Frames(func(typ uint16, _ []byte) bool { return format.MsgType(typ) != format.MsgMemoryHashes })
	_, b := stopDuringPrecopy(t, c, func(p *replay.Primary, _ *replay.Backup) bool { return p.Stats.PrecopyPass.Load() == 1 })
	if n := b.Stats.Rounds.Load(); n != 0 {
		t.Errorf("the backup applied %d rounds, want none", n)
	}
}

// TestStopWithTheLinkBackedUpHandsOver: as TestStopDuringPrecopyHandsOver,
// but when the primary is stopped the link to the backup delivers nothing
// (its buffers and the primary's send queue are full), and only later
// catches up: what the primary sends last, its last stop's commit, waits
// for room rather than being dropped, and the backup takes over.
func TestStopWithTheLinkBackedUpHandsOver(t *testing.T) {
	c := endlessPrecopyCluster(t)
	c.cfg.MaxInFlight = 1
	c.linkBuffer = 512 // a round does not fit: the sender waits in it
	hold, open := make(chan struct{}), make(chan struct{})
	c.up = gate(hold, open)
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	bm, b, done, _ := c.attachBackup(p, "backup")
	vmmtest.WaitUntil(t, "two pre-copy rounds applied", func() bool { return b.Stats.Rounds.Load() >= 2 })
	close(hold)
	time.Sleep(100 * time.Millisecond) // the link backs up (what was past the gate arrives); the guest runs on
	rounds := b.Stats.Rounds.Load()
	c.cancelP()
	time.Sleep(100 * time.Millisecond) // the stopped primary has its last messages to send
	if b.Stats.Rounds.Load() != rounds {
		t.Fatal("the held link delivered")
	}
	close(open)
	vmmtest.Closed(t, "the stopped primary's Run to return", c.pDone)
	if r := vmmtest.Receive(t, "the backup to take over", done); r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
	checkTicks(t, c.client.seen())
}

// gate is a filter that copies until hold is closed, then delivers
// nothing more until open is closed, then copies again.
func gate(hold, open <-chan struct{}) filter {
	return func(from io.Reader, to io.Writer) {
		buf := make([]byte, 512)
		for {
			select {
			case <-hold:
				<-open
			default:
			}
			n, err := from.Read(buf)
			if n > 0 {
				if _, werr := to.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

// stopDuringPrecopy runs c's tick guest alone, attaches a backup, stops
// the primary once reached says the pre-copy is where the test wants it,
// and checks that the backup takes over holding the primary's machine.
func stopDuringPrecopy(t *testing.T, c *cluster, reached func(*replay.Primary, *replay.Backup) bool) (*replay.Primary, *replay.Backup) {
	t.Helper()
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	bm, b, done, _ := c.attachBackup(p, "backup")
	vmmtest.WaitUntil(t, "the pre-copy where the test stops it", func() bool { return reached(p, b) })
	c.stopPrimary()
	if r := vmmtest.Receive(t, "the backup to take over", done); r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
	checkTicks(t, c.client.seen())
	return p, b
}

// TestPrecopyBackupLostMidway: the link to a backup attaching goes dark
// after three rounds of its pre-copy (which never ends here: the tick
// guest writes more pages than it may leave for the final stop), then
// drops. That backup never protected the guest, so the primary goes on
// alone in the same generation, and takes the next backup that attaches.
func TestPrecopyBackupLostMidway(t *testing.T) {
	c := endlessPrecopyCluster(t)
	p, _, fence := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	reached := make(chan struct{})
	c.up = stallAt(format.MsgCheckpoint, 4, reached)
	_, b, done, kill := c.attachBackup(p, "second")
	<-reached
	if line := p.Stats.PrimaryLine(); !strings.Contains(line, "pre-copy pass") {
		t.Errorf("the status line during a pre-copy does not show it: %s", line)
	}
	if p.InSync() {
		t.Error("the primary says it is in sync with a backup whose pre-copy is under way")
	}
	kill()
	if r := vmmtest.Receive(t, "the cut-off backup's Follow to return", done); r.err == nil {
		t.Fatal("a backup cut off before its sync went live")
	}
	if b.Stats.Applied.Load() != 0 {
		t.Fatal("the backup committed a sync that was never finished")
	}
	c.up = nil
	goesOnAloneAndTakesAnother(t, c, p, fence)
}

// endlessPrecopyCluster is a cluster of the tick guest whose pre-copies
// never end by themselves: the guest writes more pages than a pass may
// leave for the final stop.
func endlessPrecopyCluster(t *testing.T) *cluster {
	c := newCluster(t, "tick", tickParams...)
	c.cfg = precopyConfig()
	c.cfg.PrecopyDone, c.cfg.PrecopyRounds = 0, 1<<30
	return c
}

// goesOnAloneAndTakesAnother checks a primary whose backup was let go
// before its full checkpoint: it runs on alone without a pre-copy, in its
// generation, without counting a backup lost or a sync sent, and the next
// backup that attaches gets its rounds.
func goesOnAloneAndTakesAnother(t *testing.T, c *cluster, p *replay.Primary, fence *witness.Fence) {
	t.Helper()
	c.client.waitFrames(t, len(c.client.seen())+5) // the guest runs on, alone
	if line := p.Stats.PrimaryLine(); strings.Contains(line, "pre-copy") || p.Protected() || p.Precopying() {
		t.Errorf("protected %v, pre-copying %v: the status line shows a pre-copy that was dropped: %s", p.Protected(), p.Precopying(), line)
	}
	if g, _ := fence.Held(); g != 1 || p.Stats.BackupsLost.Load() != 0 || p.Stats.Syncs.Load() != 0 {
		t.Fatalf("the primary holds generation %d, lost %d backups, sent %d syncs: a backup that never protected it counted",
			g, p.Stats.BackupsLost.Load(), p.Stats.Syncs.Load())
	}
	_, b3, _, _ := c.attachBackup(p, "third")
	vmmtest.WaitUntil(t, "the third host's first rounds", func() bool { return b3.Stats.Rounds.Load() >= 3 })
	checkTicks(t, c.client.seen())
}

// TestDetachDuringAPrecopy: the operator detaches a backup still getting
// its full checkpoint by pre-copy (which never ends here). It is let go
// at once, without a contest: it does not go live, the primary keeps its
// generation and runs on alone, and takes the next backup that attaches.
func TestDetachDuringAPrecopy(t *testing.T) {
	c := endlessPrecopyCluster(t)
	p, _, fence := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	_, b, done, _ := c.attachBackup(p, "second")
	vmmtest.WaitUntil(t, "three rounds applied", func() bool { return b.Stats.Rounds.Load() >= 3 })
	ctx, cancel := context.WithTimeout(context.Background(), vmmtest.Bound)
	defer cancel()
	if err := p.Detach(ctx); err != nil {
		t.Fatalf("Detach during the pre-copy: %v", err)
	}
	if r := vmmtest.Receive(t, "the detached backup's Follow to return", done); r.err == nil {
		t.Fatal("a backup detached before its sync went live")
	}
	goesOnAloneAndTakesAnother(t, c, p, fence)
}

// TestPrecopyRoundCorrupted: a round message is damaged in flight. The
// backup rejects it and asks for a full checkpoint; the primary drops the
// rest of the pre-copy, stops to copy it all, and the backup ends with the
// primary's machine.
func TestPrecopyRoundCorrupted(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	c.cfg = precopyConfig()
	c.up = corrupt(format.MsgCheckpoint, 3)
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	bm, b, done, _ := c.attachBackup(p, "backup")
	vmmtest.WaitUntil(t, "the backup in sync", func() bool { return b.Stats.Applied.Load() >= 1 })
	if p.Stats.Resyncs.Load() == 0 {
		t.Fatal("the backup applied a sync one of whose rounds it rejected, without asking for another")
	}
	c.client.waitFrames(t, len(c.client.seen())+5)
	c.stopPrimary()
	if r := vmmtest.Receive(t, "the backup to take over", done); r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
}

// BenchmarkAttach attaches a backup to a busy tick guest of 64 MiB and
// measures what its client sees: the longest gap between two of the
// guest's frames (one per millisecond of guest time) until the full
// checkpoint is committed, how long that takes, and how long the first
// output after it waits (for the backup's ack: it must have caught up);
// medians over b.N attaches. By pre-copy the guest
// stops for one round of 256 pages at a time; the floor to compare with is
// the same machinery in one stop (all of memory in one round), which is
// what attaching cost before pre-copy.
func BenchmarkAttach(b *testing.B) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler)) // the engines' logs would split the results' lines
	for _, tc := range []struct {
		name  string
		chunk int
	}{{"pre-copy", 256}, {"one-stop", 1 << 14}} {
		b.Run(tc.name, func(b *testing.B) {
			var gaps, tooks, afters []time.Duration
			for range b.N {
				g, d, a := attachOnce(b, tc.chunk)
				gaps, tooks, afters = append(gaps, g), append(tooks, d), append(afters, a)
			}
			// Medians over the attaches: this shared host stalls now and then.
			median := func(ds []time.Duration) float64 {
				slices.Sort(ds)
				return float64(ds[len(ds)/2].Microseconds()) / 1e3
			}
			b.ReportMetric(median(gaps), "max-gap-ms")
			b.ReportMetric(median(tooks), "sync-ms")
			b.ReportMetric(median(afters), "first-out-after-ms")
		})
	}
}

// attachOnce runs one BenchmarkAttach case: the longest gap between the
// guest's frames from the attach to the sync's commit, the time to it, and
// the time from it to the next frame (which waits for the backup's ack).
func attachOnce(b *testing.B, chunk int) (gap, took, after time.Duration) {
	c := newCluster(b, "tick", sim.Param{Name: "period_ns", Value: 200_000}, sim.Param{Name: "work", Value: 2_000}, sim.Param{Name: "every", Value: 5})
	c.pages = 1 << 14
	c.cfg.PrecopyChunk = chunk
	c.cfg.Verify = false // a hash of all memory in the final stop: the default is off
	var arrivals []time.Time
	c.client.onFrame = func(string, []byte) { arrivals = append(arrivals, time.Now()) }
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(b, 20)
	c.client.mu.Lock()
	from := len(arrivals)
	c.client.mu.Unlock()
	start := time.Now()
	_, _, _, kill := c.attachBackup(p, "backup")
	vmmtest.WaitUntil(b, "the sync's commit", func() bool { return p.Stats.Syncs.Load() >= 1 })
	committed := time.Now()
	took = committed.Sub(start)
	c.client.waitFrames(b, len(c.client.seen())+1)
	after = time.Since(committed)
	// Stopped now, not at the benchmark's end: the next iteration's
	// guests must not share the CPU with this one's.
	c.cancelP()
	<-c.pDone
	kill()
	c.client.mu.Lock()
	defer c.client.mu.Unlock()
	// The gaps until the commit (after it, outputs wait for the backup's
	// acks: output commit, not the attach).
	prev := start
	for _, at := range arrivals[from:] {
		if at.After(committed) {
			break
		}
		gap = max(gap, at.Sub(prev))
		prev = at
	}
	return max(gap, committed.Sub(prev)), took, after
}
