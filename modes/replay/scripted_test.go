package replay_test

import (
	"context"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// scriptedHost is a primary's host whose timing the test decides, so that
// an interleaving a loaded host produces once in a while happens every
// time. The guest is stopped, as a kick stops it, at every every-th visit
// of the instruction at rip, and only then: the host's own kicks (its
// timers, a received frame) are ignored. The host's clock (SetHostClock)
// is virtual: it stands still, except that the stallAt-th reading after
// each such stop is stall later than the reading before it (the engine's
// thread was descheduled between two looks at the clock), and that while
// the guest is halted it is at least the guest's timer deadline (an idle
// host sleeps until then).
//
// The engine calls everything on its goroutine but Kick, which does
// nothing here, so no field needs a lock.
type scriptedHost struct {
	*sim.Machine
	rip     uint64
	every   int
	stallAt int
	stall   time.Duration

	visits int           // of rip
	reads  int           // of the clock since the last stop at rip
	now    time.Duration // the clock
	kicks  int           // stops at rip reported as kicks
}

// scriptHost makes the cluster's next primary (start or alonePrimary) run
// on a scriptedHost stopping at label of the cluster's guest.
func (c *cluster) scriptHost(label string, every, stallAt int, stall time.Duration) *scriptedHost {
	rip, err := sim.GuestSymbol(c.guest, label)
	if err != nil {
		c.t.Fatal(err)
	}
	h := &scriptedHost{rip: rip, every: every, stallAt: stallAt, stall: stall}
	c.pMachine = func(m *sim.Machine) machine.Stepper {
		h.Machine = m
		return h
	}
	c.onPrimary = func(p *replay.Primary) { replay.SetHostClock(p, h.elapsed) }
	return h
}

// Kick implements replay.Machine: the script decides where the guest stops.
func (h *scriptedHost) Kick() {}

// Run implements replay.Machine.
func (h *scriptedHost) Run() (machine.Exit, error) {
	for {
		e, err := h.Machine.RunTo(h.rip)
		if err != nil || e.Kind != machine.ExitBreakpoint {
			return e, err
		}
		if h.visits++; h.visits%h.every == 0 {
			h.reads = 0
			h.kicks++
			return machine.Exit{Kind: machine.ExitKicked, RIP: e.RIP}, nil
		}
	}
}

// elapsed is the host's clock (see scriptedHost).
func (h *scriptedHost) elapsed() time.Duration {
	if h.reads++; h.reads == h.stallAt {
		h.now += h.stall
	}
	if dl, ok := h.TimerDeadline(); ok && h.Halted() {
		h.now = max(h.now, time.Duration(dl))
	}
	return h.now
}

// TestKickedStopsAreLoggedBeforeInput: the engine's thread is descheduled
// right after its first look at the clock at every kicked stop, for a
// timer period. The timer falls due meanwhile, at a stop the log does not
// name yet. Whatever the engine then delivers there (a poll, an
// interrupt) must come after a landing that names the stop, or the backup
// delivers it elsewhere: the primary used to decide whether to log the
// stop from one reading of the clock and deliver from the next, so the
// tick guest's backup diverged on a loaded host (its tick frame's hash
// differed from the primary's).
func TestKickedStopsAreLoggedBeforeInput(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	h := c.scriptHost("work_loop", 101, 2, 200*time.Microsecond)
	c.start()
	c.client.waitFrames(t, 20)
	c.stopPrimary()
	c.failover()
	sameMachine(t, c.pm, c.bm)
	if d := c.backup.Stats.Divergences.Load(); d != 0 {
		t.Errorf("%d divergences", d)
	}
	if l := c.primary.Stats.Landings.Load(); l == 0 || h.kicks == 0 {
		t.Errorf("%d kicks, %d landings: the test does not test", h.kicks, l)
	}
	checkTicks(t, c.client.seen())
}

// TestPrecopyEndsAtAKick: a backup attaches to a busy tick guest, and the
// pre-copy's final stop comes at a kicked stop (the host's clock moves on
// only at kicks, and far enough for a round each time), after interrupts
// the primary delivered alone at earlier kicks. The backup's guest starts
// at the sync with a new signature interval; the primary's must too, or
// the first landing after the sync hashes pages written before it and the
// backup finds no match (a divergence, then a resync: what an attach to a
// busy guest cost now and then).
func TestPrecopyEndsAtAKick(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	c.cfg.PrecopyChunk, c.cfg.PrecopyRounds = testPages, 1 // one round, then the final stop
	// Kicks every few instructions: the first landing after the sync
	// comes before the guest has written most of the pages it wrote
	// since its last exit before it.
	h := c.scriptHost("work_loop", 3, 1, 5*time.Millisecond)
	p, _, _ := c.alonePrimary(context.Background())
	c.client.waitFrames(t, 3)
	bm, b, done, _ := c.attachBackup(p, "backup")
	vmmtest.WaitUntil(t, "the backup in sync", func() bool { return b.Stats.Applied.Load() >= 1 })
	c.client.waitFrames(t, len(c.client.seen())+5)
	c.stopPrimary()
	r := vmmtest.Receive(t, "the backup to take over", done)
	if r.err != nil {
		t.Fatalf("the backup did not take over: %v", r.err)
	}
	sameMachine(t, c.pm, bm)
	if d := b.Stats.Divergences.Load(); d != 0 {
		t.Errorf("%d divergences", d)
	}
	if s := p.Stats.Syncs.Load(); s != 1 {
		t.Errorf("%d syncs: the attach's and %d to resynchronise", s, s-1)
	}
	if l := p.Stats.Landings.Load(); l == 0 || h.kicks == 0 {
		t.Errorf("%d kicks, %d landings: the test does not test", h.kicks, l)
	}
	checkTicks(t, c.client.seen())
}
