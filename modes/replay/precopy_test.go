package replay_test

import (
	"context"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/modes/replay/simvm"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/witness"
)

// alonePrimary starts a primary of the cluster's guest with no backup,
// as the client's target, and returns it, its machine and its fence.
func (c *cluster) alonePrimary(ctx context.Context) (*replay.Primary, *simvm.Machine, *witness.Fence) {
	t := c.t
	fence := witness.NewFence(c.arb, "first")
	if _, err := fence.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	plug := &replay.Plug{}
	m, err := simvm.New(c.guest, testPages, plug, c.params...)
	if err != nil {
		t.Fatal(err)
	}
	nic, cut := c.client.nic("first")
	c.cutNIC = cut
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: fence, Net: nic, Disk: c.disk, Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := replay.NewPrimary(c.cfg, m, plug, out, fence, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	pctx, stop := context.WithCancel(ctx)
	c.cancelP = stop
	go func() { c.pErr = p.Run(pctx, nil); close(c.pDone) }()
	t.Cleanup(func() { stop(); <-c.pDone })
	c.primary, c.pm, c.live = p, m, p
	return p, m, fence
}

// precopyConfig pre-copies a few pages at a time, so that a pass over the
// test guest's memory takes many boundaries.
func precopyConfig() replay.Config {
	cfg := testConfig()
	cfg.PrecopyChunk, cfg.PrecopyDone, cfg.PrecopyRounds = 2, 1, 4
	return cfg
}

// waitUntil polls cond; the deadline only bounds a broken engine.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s", what)
		}
	}
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
	waitUntil(t, "the sync's commit", func() bool { return p.Stats.Syncs.Load() >= 1 })
	// More pages than the guest has: a later pass sent again pages the
	// guest wrote while the first ran.
	if n := p.Stats.Precopied.Load(); n <= testPages {
		t.Errorf("%d pages went in rounds, for a guest of %d: it did not run during the pre-copy", n, testPages)
	}
	waitUntil(t, "the backup in sync", func() bool { return b.Stats.Applied.Load() >= 1 })
	if r := b.Stats.Rounds.Load(); r < testPages/2 {
		t.Errorf("the backup applied %d rounds, want at least %d", r, testPages/2)
	}
	c.client.waitFrames(t, len(c.client.seen())+5) // recorded and replayed a while
	c.stopPrimary()
	r := <-done
	if r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
	checkTicks(t, c.client.seen())
}

// TestPrecopyBackupLostMidway: the link to a backup attaching goes dark
// after three rounds of its pre-copy (which never ends here: the tick
// guest writes more pages than it may leave for the final stop), then
// drops. That backup never protected the guest, so the primary goes on
// alone in the same generation, and takes the next backup that attaches.
func TestPrecopyBackupLostMidway(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	c.cfg = precopyConfig()
	c.cfg.PrecopyDone, c.cfg.PrecopyRounds = 0, 1<<30
	p, _, fence := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	reached := make(chan struct{})
	c.up = stallAt(format.MsgCheckpoint, 4, reached)
	_, b, done, kill := c.attachBackup(p, "second")
	<-reached
	kill()
	if r := <-done; r.err == nil {
		t.Fatal("a backup cut off before its sync went live")
	}
	if b.Stats.Applied.Load() != 0 {
		t.Fatal("the backup committed a sync that was never finished")
	}
	c.up = nil
	c.client.waitFrames(t, len(c.client.seen())+5) // the guest runs on, alone
	if g, _ := fence.Held(); g != 1 || p.Stats.BackupsLost.Load() != 0 || p.Stats.Syncs.Load() != 0 {
		t.Fatalf("the primary holds generation %d, lost %d backups, sent %d syncs: a backup that never protected it counted",
			g, p.Stats.BackupsLost.Load(), p.Stats.Syncs.Load())
	}
	_, b3, _, _ := c.attachBackup(p, "third")
	waitUntil(t, "the third host's first rounds", func() bool { return b3.Stats.Rounds.Load() >= 3 })
	checkTicks(t, c.client.seen())
}

// TestPrecopyRoundCorrupted: a round message is damaged in flight. The
// backup rejects it, so the commit finds a page never came; the backup
// asks for a full checkpoint, gets one by stop-and-copy, and ends with the
// primary's machine.
func TestPrecopyRoundCorrupted(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	c.cfg = precopyConfig()
	c.up = corrupt(format.MsgCheckpoint, 3)
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	bm, b, done, _ := c.attachBackup(p, "backup")
	waitUntil(t, "the backup in sync", func() bool { return b.Stats.Applied.Load() >= 1 })
	if p.Stats.Syncs.Load() < 2 || b.Stats.Divergences.Load() == 0 {
		t.Fatalf("%d syncs sent, %d divergences: the damaged round went unnoticed", p.Stats.Syncs.Load(), b.Stats.Divergences.Load())
	}
	c.client.waitFrames(t, len(c.client.seen())+5)
	c.stopPrimary()
	if r := <-done; r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
}
