package node

import (
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// countingRunner is a machine that counts dirty pages; the methods of the
// embedded nil Runner are not called.
type countingRunner struct {
	machine.Runner
	n int
}

func (c countingRunner) DirtySoFar() (int, error) { return c.n, nil }

// The hold between the engine and the machine counts dirty pages where the
// machine does, and fails where it does not, instead of hiding the count
// (the primary would then make its page buffers in the pause).
func TestHoldPassesTheDirtyCount(t *testing.T) {
	wrapped, _ := newHold(countingRunner{n: 42})
	dc, ok := wrapped.(machine.DirtyCounter)
	if !ok {
		t.Fatal("the hold hides the machine's DirtySoFar")
	}
	if n, err := dc.DirtySoFar(); n != 42 || err != nil {
		t.Fatalf("DirtySoFar through the hold: %d, %v; want 42", n, err)
	}
	plain, _ := newHold(struct{ machine.Runner }{})
	if _, err := plain.(machine.DirtyCounter).DirtySoFar(); err == nil {
		t.Fatal("a machine that cannot count counted through the hold")
	}
}

// recyclingRunner is a machine that takes states back; the methods of the
// embedded nil Runner are not called.
type recyclingRunner struct {
	machine.Runner
	got *[][]byte
}

func (r recyclingRunner) RecycleState(s []byte) { *r.got = append(*r.got, s) }

// The hold gives the engine's used states back to a machine that reuses
// them (else its pauses would encode each into a fresh buffer), and drops
// them for one that does not.
func TestHoldPassesRecycledStates(t *testing.T) {
	var got [][]byte
	wrapped, _ := newHold(recyclingRunner{got: &got})
	r, ok := wrapped.(machine.StateRecycler)
	if !ok {
		t.Fatal("the hold hides the machine's RecycleState")
	}
	r.RecycleState([]byte("state"))
	if len(got) != 1 || string(got[0]) != "state" {
		t.Fatalf("the machine got back %q, want the one state", got)
	}
	plain, _ := newHold(struct{ machine.Runner }{})
	plain.(machine.StateRecycler).RecycleState([]byte("state")) // dropped, no panic
}

// The hold pauses the machine while the operator, a handover or the engine
// has it paused, and only then; checkpoints hear only of the operator's
// (Held); an operator's hold before Start makes the guest start paused.
// Each step is checked on the software machine itself: a paused guest
// executes nothing, a running one goes on.
func TestHoldPausesWhileAnyoneHolds(t *testing.T) {
	g, err := sim.NewCheckpointGuest("tick", 64, simDevices{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	engine, h := newHold(g)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	paused := func(what string) {
		t.Helper()
		before := g.Instructions()
		time.Sleep(20 * time.Millisecond)
		if after := g.Instructions(); after != before {
			t.Fatalf("%s: the guest ran %d instructions, want it paused", what, after-before)
		}
	}
	running := func(what string) {
		t.Helper()
		before := g.Instructions()
		vmmtest.WaitUntil(t, what+": the guest to run", func() bool { return g.Instructions() > before })
	}

	must("Hold before Start", h.Hold())
	must("Start", g.Start())
	paused("held before Start, started")
	must("Release", h.Release())
	running("released")

	must("Hold", h.Hold())
	must("engine Pause", engine.Pause())
	must("engine Resume", engine.Resume())
	paused("held, the engine's pause over")
	if !h.Held() {
		t.Fatal("Held says no while the operator holds the guest")
	}
	must("Release", h.Release())
	running("released")

	must("handOver", h.handOver())
	if h.Held() {
		t.Fatal("Held says yes for a handover's hold: checkpoints would carry it")
	}
	must("Hold during a handover", h.Hold())
	must("Release during a handover", h.Release())
	paused("released by the operator, handing over")
	must("engine Pause", engine.Pause())
	must("endHandover", h.endHandover())
	paused("the handover over, the engine's pause not")
	must("engine Resume", engine.Resume())
	running("nobody holding")
	if err := h.Release(); err == nil {
		t.Fatal("Release of a guest not held succeeded")
	}
}
