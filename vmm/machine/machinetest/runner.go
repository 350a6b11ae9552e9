package machinetest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// Runner is a machine.Runner under test, with its network device's
// receive path.
type Runner struct {
	machine.Runner
	// Receive hands the network device a frame, which it writes into a
	// buffer the guest posted, now or once the guest runs (nil: the
	// machine has no network device).
	Receive func(frame []byte)
}

// RunnerSuite describes a machine.Runner implementation to RunRunner.
type RunnerSuite struct {
	// Open builds a fresh machine, not started, the same machine on every
	// call: one's state restores into another. Its guest writes memory on
	// its own or as it receives frames. It closes the machine with
	// t.Cleanup.
	Open func(t *testing.T) Runner
	// Foreign returns states the machine must refuse (nil: only
	// corruptions of its own).
	Foreign Foreign
	// StateDiff compares states (nil: byte for byte).
	StateDiff StateDiff
}

// RunRunner runs the contract of machine.Runner (and so of
// machine.Machine, and of machine.PauseSaver where the machine is one)
// against s's machines, driving them as checkpoint mode does: running
// freely, paused for each harvest.
//
//   - Memory is whole pages and stable.
//   - Each Harvest reports every page whose contents changed since the
//     previous one, the guest's writes and its network device's (frames
//     received while it runs).
//   - After Pause nothing changes memory, not even a frame received; while
//     paused, CopyLive copies what Memory holds.
//   - A state saved paused (with Pause, and with PauseSaving) and restored,
//     with memory, into a fresh machine gives back the same state; the
//     restored machine starts and runs. Bad states (truncated, corrupt, too
//     long, of another machine) are refused and change nothing.
//   - Stopped stays open while the guest runs or is paused.
//   - A machine paused before Start (restored) starts paused: neither its
//     memory nor its state changes until Resume, which runs it.
//   - On a machine.CopyOnWriter, pages copied after Resume are as they were
//     at the pause (runCopyOnWrite).
//   - On a machine.DirtyCounter that counts, a count while the guest runs
//     takes nothing from the next Harvest (which must still report every
//     change), is no more than it reports (twice, as a page both the guest
//     and a device wrote counts twice), and is not always zero.
func RunRunner(t *testing.T, s RunnerSuite) {
	t.Run("Memory", func(t *testing.T) {
		r := s.Open(t)
		checkMemory(t, r)
		if err := r.Harvest(machine.NewBitmap(pages(r))); err != nil {
			t.Fatalf("Harvest into a bitmap of every page, before Start: %v", err)
		}
	})

	t.Run("Harvest", func(t *testing.T) {
		r := &runner{Runner: s.Open(t)}
		r.tr = newTracker(t, r)
		if err := r.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(vmmtest.Bound)
		// With a network, 5 rounds go after the first frame is seen in
		// memory (the guest is up), so that frames come while it is paused.
		up := -1
		for r.rounds < 3 || r.tr.changed < 16 || r.Receive != nil && (up < 0 || r.rounds < up+5) {
			if up < 0 && r.landed > 0 {
				up = r.rounds
			}
			if time.Now().After(deadline) {
				t.Fatalf("after %v, %d rounds: %d page changes seen, %d of %d frames found in memory", vmmtest.Bound, r.rounds, r.tr.changed, r.landed, r.frames)
			}
			r.round(t)
		}
		if r.counted == 0 && r.countErr == nil && r.tr.changed > 0 {
			if _, ok := r.Runner.Runner.(machine.DirtyCounter); ok {
				t.Fatalf("%d page changes reported, and DirtySoFar counted none while the guest ran", r.tr.changed)
			}
		}
		t.Logf("%d rounds, %d page changes reported, %d of %d frames seen in memory, %d dirty pages counted while running (%v)", r.rounds, r.tr.changed, r.landed, r.frames, r.counted, r.countErr)
	})

	t.Run("SaveRestore", func(t *testing.T) {
		a := &runner{Runner: s.Open(t)}
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		_, saver := a.Runner.Runner.(machine.PauseSaver)
		for _, saving := range []bool{false, true} {
			if saving && !saver {
				continue
			}
			for i := 0; i < 3; i++ {
				a.round(t)
			}
			a.pause(t, saving)
			state, err := a.SaveState()
			if err != nil {
				t.Fatalf("SaveState (paused with PauseSaving: %v): %v", saving, err)
			}
			mem := bytes.Clone(a.Memory())
			if err := a.Resume(); err != nil {
				t.Fatal(err)
			}

			b := &runner{Runner: s.Open(t)}
			restoreInto(t, b, mem, state, s.StateDiff)
			if !saving {
				var foreign map[string][]byte
				if s.Foreign != nil {
					foreign = s.Foreign(t)
				}
				checkRefuses(t, b, state, foreign, s.StateDiff)
			}
			b.tr = newTracker(t, b)
			if err := b.Start(); err != nil {
				t.Fatalf("Start of a restored machine: %v", err)
			}
			for i := 0; i < 3; i++ {
				b.round(t)
			}
		}
	})

	t.Run("PauseBeforeStart", func(t *testing.T) { runPauseBeforeStart(t, s) })

	if _, ok := s.Open(t).Runner.(machine.CopyOnWriter); ok {
		t.Run("CopyOnWrite", func(t *testing.T) { runCopyOnWrite(t, s.Open(t)) })
	}
}

// runPauseBeforeStart checks a machine paused before Start, as a backup's
// guest goes live held by its operator: restored from a running machine's
// state, paused, started, it changes neither memory nor state (not for a
// frame received either), and runs once resumed; one paused and resumed
// before Start runs once started.
func runPauseBeforeStart(t *testing.T, s RunnerSuite) {
	a := &runner{Runner: s.Open(t)}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		a.round(t)
	}
	a.pause(t, false)
	state, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	mem := bytes.Clone(a.Memory())

	b := pausedBeforeStart(t, s, mem, state)
	if err := b.Start(); err != nil {
		t.Fatalf("Start of a machine paused before: %v", err)
	}
	b.receive()
	time.Sleep(50 * time.Millisecond) // what the guest would run meanwhile
	select {
	case <-b.Stopped():
		t.Fatal("Stopped is closed: the guest stopped for good")
	default:
	}
	if !bytes.Equal(b.Memory(), mem) {
		t.Fatal("a machine paused before Start changed memory once started")
	}
	again, err := b.SaveState()
	if err != nil {
		t.Fatalf("SaveState of a machine started paused: %v", err)
	}
	s.StateDiff.same(t, again, state, "a machine paused before Start changed state once started")
	if err := b.Resume(); err != nil {
		t.Fatalf("Resume of a machine started paused: %v", err)
	}
	runsSoon(t, b, "resumed")

	// Paused, then resumed, before Start: Start runs it.
	c := pausedBeforeStart(t, s, mem, state)
	if err := c.Resume(); err != nil {
		t.Fatalf("Resume before Start of a machine paused before: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatalf("Start of a machine paused and resumed before: %v", err)
	}
	runsSoon(t, c, "paused and resumed before Start, started")
}

// pausedBeforeStart opens a fresh machine, restores mem and state into
// it, starts tracking its pages, and pauses it before Start.
func pausedBeforeStart(t *testing.T, s RunnerSuite, mem, state []byte) *runner {
	t.Helper()
	r := &runner{Runner: s.Open(t)}
	restoreInto(t, r, mem, state, s.StateDiff)
	r.tr = newTracker(t, r)
	if err := r.Pause(); err != nil {
		t.Fatalf("Pause before Start: %v", err)
	}
	return r
}

// runsSoon runs rounds of r until its guest has changed a page.
func runsSoon(t *testing.T, r *runner, what string) {
	t.Helper()
	deadline := time.Now().Add(vmmtest.Bound)
	for r.tr.changed == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s, the guest changed no page in %v", what, vmmtest.Bound)
		}
		r.round(t)
	}
}

// runCopyOnWrite checks machine.CopyOnWriter: pages snapshot while paused
// reach dst as they were at the pause, however soon after Resume the guest
// or a device writes them (the guest writes memory on its own; a frame
// comes every round if the machine has a network). It logs how many
// writes waited for their copy: a suite whose guest rewrites its pages
// within a round makes some wait, which is the case that matters.
func runCopyOnWrite(t *testing.T, m Runner) {
	r := &runner{Runner: m}
	cw := m.Runner.(machine.CopyOnWriter)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	dirty := machine.NewBitmap(pages(r))
	var waited uint64
	var copied int
	for round := 0; round < 30; round++ {
		r.pause(t, false)
		dirty.Clear()
		if err := r.Harvest(dirty); err != nil {
			t.Fatal(err)
		}
		pfns := dirty.AppendPages(nil)
		mem := r.Memory()
		want := make([]byte, 0, len(pfns)*PageSize)
		for _, p := range pfns {
			want = append(want, mem[p*PageSize:(p+1)*PageSize]...)
		}
		dst := make([]byte, len(want))
		wait, err := cw.CopyOnWrite(pfns, dst)
		if errors.Is(err, machine.ErrNoCopyOnWrite) {
			// The machine copies in the pause here, as the primary then
			// does: nothing of this contract can be seen.
			if err := r.Resume(); err != nil {
				t.Fatal(err)
			}
			t.Skipf("this host cannot copy pages after a resume: %v", err)
		}
		if err != nil {
			t.Fatalf("round %d: CopyOnWrite of %d pages: %v", round, len(pfns), err)
		}
		r.receive()
		if err := r.Resume(); err != nil {
			t.Fatal(err)
		}
		n, err := wait()
		if err != nil {
			t.Fatalf("round %d: copying %d pages after Resume: %v", round, len(pfns), err)
		}
		for i, p := range pfns {
			if !bytes.Equal(dst[i*PageSize:(i+1)*PageSize], want[i*PageSize:(i+1)*PageSize]) {
				t.Fatalf("round %d: page %d (%d of %d) was copied after a write: it is not as it was at the pause", round, p, i, len(pfns))
			}
		}
		waited += n
		copied += len(pfns)
		time.Sleep(2 * time.Millisecond) // the guest runs, as in round
	}
	t.Logf("30 rounds, %d pages copied after Resume, %d writes waited for their copy", copied, waited)
}

// runner drives a Runner in rounds: run, pause, check, resume.
type runner struct {
	Runner
	tr *tracker
	// frames counts the frames received (the next one's index); pending
	// holds the payloads of those not yet found in memory; landed counts
	// those found.
	frames  int
	pending [][]byte
	landed  int
	rounds  int
	// counted sums what DirtySoFar counted before each pause, on a
	// machine.DirtyCounter; countErr is its error if it cannot count.
	counted  int
	countErr error
}

// pause pauses r (with PauseSaving if saving) and checks Stopped.
func (r *runner) pause(t *testing.T, saving bool) {
	t.Helper()
	var err error
	if saving {
		err = r.Runner.Runner.(machine.PauseSaver).PauseSaving()
	} else {
		err = r.Pause()
	}
	if err != nil {
		t.Fatalf("pause (PauseSaving: %v): %v", saving, err)
	}
	select {
	case <-r.Stopped():
		t.Fatal("Stopped is closed: the guest stopped for good")
	default:
	}
}

// receive hands the guest its next frame, if it has a network.
func (r *runner) receive() {
	if r.Receive == nil {
		return
	}
	f, payload := frame(r.frames)
	r.frames++
	r.pending = append(r.pending, payload)
	r.Receive(f)
}

// round lets the guest run with a frame, pauses it (every other round with
// PauseSaving, on a PauseSaver), checks the harvest if r has a tracker,
// checks that a frame received while paused changes nothing and that
// CopyLive copies memory, and resumes it.
func (r *runner) round(t *testing.T) {
	t.Helper()
	r.receive()
	counted := 0
	if dc, ok := r.Runner.Runner.(machine.DirtyCounter); ok && r.tr != nil {
		counted, r.countErr = dc.DirtySoFar()
		r.counted += counted
	}
	_, saver := r.Runner.Runner.(machine.PauseSaver)
	r.pause(t, saver && r.rounds%2 == 1)
	if r.tr != nil {
		changed := r.tr.check(t, fmt.Sprintf("round %d", r.rounds))
		if counted > 2*r.tr.reported {
			t.Fatalf("round %d: %d dirty pages counted while the guest ran, %d reported by the Harvest after", r.rounds, counted, r.tr.reported)
		}
		mem := r.Memory()
		for i := 0; i < len(r.pending); {
			if holds(mem, changed, r.pending[i]) {
				r.landed++
				r.pending = append(r.pending[:i], r.pending[i+1:]...)
				continue
			}
			i++
		}
		// Paused, nothing writes memory: not a frame received now either.
		r.receive()
		for p := uint64(0); p < uint64(len(mem)/PageSize); p++ {
			if !bytes.Equal(mem[p*PageSize:(p+1)*PageSize], r.tr.snap[p*PageSize:(p+1)*PageSize]) {
				t.Fatalf("round %d: page %d changed while the machine was paused", r.rounds, p)
			}
		}
		page := make([]byte, PageSize)
		for _, p := range append(changed, 0, uint64(len(mem)/PageSize-1)) {
			r.CopyLive(page, p)
			if !bytes.Equal(page, mem[p*PageSize:(p+1)*PageSize]) {
				t.Fatalf("round %d: CopyLive of page %d, paused, differs from Memory", r.rounds, p)
			}
		}
	}
	if err := r.Resume(); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	r.rounds++
	// Let the guest run a while: otherwise it runs only while the next
	// round starts, which in an emulated KVM (a third of a millisecond per
	// VM exit) is too little for the kv guest to boot in minutes.
	time.Sleep(2 * time.Millisecond)
}
