package node

import (
	"errors"
	"sync"

	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// hold lets the operator pause a running guest (ftckpt ctl pause) under a
// checkpoint-mode engine that pauses and resumes it every epoch: it stands
// between the engine and the machine, and while the operator holds the
// guest, the engine's Resume leaves it paused (and its Pause finds it
// paused already). The engine goes on taking checkpoints, of a guest that
// changes nothing.
//
// A planned failover holds the guest too (handOver), while the final
// checkpoint is taken: that hold is not the operator's, and checkpoints
// say only whether the operator held the guest (Held, which the engine
// asks as machine.OperatorHold), so that a backup going live keeps the
// guest paused exactly when the operator had it so.
type hold struct {
	machine.Runner
	mu sync.Mutex // protects the fields below, and orders every Pause and Resume of Runner
	// held: the operator holds the guest; handover: a planned failover
	// does; engine: the engine has it paused. The machine is paused while
	// any of them is set.
	held, handover, engine bool
}

// pausedByOthers says whether someone other than the caller, who is about
// to set or clear its own field (named by mine), has the machine paused.
// Precondition: mu is held.
func (h *hold) pausedByOthers(mine *bool) bool {
	return h.held && mine != &h.held || h.handover && mine != &h.handover || h.engine && mine != &h.engine
}

// holdSaver is a hold around a machine.PauseSaver: the engine looks for
// PauseSaving, so the wrapper must offer it exactly when the machine does.
type holdSaver struct{ *hold }

// PauseSaving is Pause with the capture started as the vCPUs stop; a
// guest the operator holds is paused already, and its state is captured
// when the engine asks for it.
func (h holdSaver) PauseSaving() error {
	return h.enginePause(h.Runner.(machine.PauseSaver).PauseSaving)
}

// holdCopier is a holdSaver around a machine that is also a
// machine.CopyOnWriter (KVM's), offering its CopyOnWrite: copying pages
// after a resume changes nothing of who holds the guest.
type holdCopier struct{ holdSaver }

// CopyOnWrite implements machine.CopyOnWriter.
func (h holdCopier) CopyOnWrite(pfns []uint64, dst []byte) (func() (uint64, error), error) {
	return h.Runner.(machine.CopyOnWriter).CopyOnWrite(pfns, dst)
}

// DirtySoFar implements machine.DirtyCounter, by every hold: it fails
// where the machine cannot count (machine.DirtyCounter allows that), which
// spares a wrapper for each mix of the interfaces the engine looks for.
func (h *hold) DirtySoFar() (int, error) {
	c, ok := h.Runner.(machine.DirtyCounter)
	if !ok {
		return 0, errors.New("this machine cannot count dirty pages while the guest runs")
	}
	return c.DirtySoFar()
}

// RecycleState implements machine.StateRecycler, by every hold: it gives
// the state back to the machine where that reuses them, and drops it
// otherwise.
func (h *hold) RecycleState(state []byte) {
	if r, ok := h.Runner.(machine.StateRecycler); ok {
		r.RecycleState(state)
	}
}

// Unwrap is the machine under the hold.
func (h *hold) Unwrap() machine.Runner { return h.Runner }

// newHold wraps r in a hold that offers what r offers of the interfaces the
// engine looks for: a holdCopier if r is a machine.PauseSaver and a
// machine.CopyOnWriter, a holdSaver if only the first.
func newHold(r machine.Runner) (machine.Runner, *hold) {
	h := &hold{Runner: r}
	_, saver := r.(machine.PauseSaver)
	_, copier := r.(machine.CopyOnWriter)
	switch {
	case saver && copier:
		return holdCopier{holdSaver{h}}, h
	case saver:
		return holdSaver{h}, h
	}
	return h, h
}

// Pause implements machine.Runner for the engine.
func (h *hold) Pause() error { return h.enginePause(h.Runner.Pause) }

func (h *hold) enginePause(pause func() error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.engine = true
	if h.pausedByOthers(&h.engine) {
		return nil
	}
	return pause()
}

// Resume implements machine.Runner for the engine.
func (h *hold) Resume() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.engine = false
	if h.pausedByOthers(&h.engine) {
		return nil
	}
	return h.Runner.Resume()
}

// errNotRunning is Hold's and Release's answer for a guest that has not
// started or has stopped.
var errNotRunning = errors.New("the guest is not running")

// Hold pauses the guest for the operator until Release. Holding a held
// guest is an error. A guest not started yet (a backup's going live from
// a checkpoint the operator held) starts paused.
func (h *hold) Hold() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held {
		return errors.New("the guest is paused already")
	}
	return h.set(&h.held)
}

// Release lets a held guest run again (once the engine's pause in
// progress, if any, ends). Releasing a guest not held is an error.
func (h *hold) Release() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.held {
		return errors.New("the guest is not paused")
	}
	return h.clear(&h.held)
}

// handOver pauses the guest for a planned failover, whether or not the
// operator holds it, until endHandover (if the failover gives up).
func (h *hold) handOver() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.set(&h.handover)
}

// endHandover lets the guest run again after a failover that gave up,
// unless the operator or the engine holds it.
func (h *hold) endHandover() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.clear(&h.handover)
}

// set pauses the machine unless another has it paused, and sets mine.
// Precondition: mu is held.
func (h *hold) set(mine *bool) error {
	if h.stopped() {
		return errNotRunning
	}
	if !h.pausedByOthers(mine) {
		if err := h.Runner.Pause(); err != nil {
			return err
		}
	}
	*mine = true
	return nil
}

// clear resumes the machine unless another has it paused, and clears
// mine. Precondition: mu is held.
func (h *hold) clear(mine *bool) error {
	if !h.pausedByOthers(mine) {
		if err := h.Runner.Resume(); err != nil {
			return err
		}
	}
	*mine = false
	return nil
}

// Held says whether the operator holds the guest.
func (h *hold) Held() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

func (h *hold) stopped() bool {
	select {
	case <-h.Stopped():
		return true
	default:
		return false
	}
}

// holder is what ftckpt ctl pause and resume act on: a hold (checkpoint
// mode, alone) or a holdStepper (replay mode).
type holder interface {
	Hold() error
	Release() error
	Held() bool
}

// holdStepper lets the operator pause a replay-mode guest: it stands
// between the engine and the machine, and while the operator holds the
// guest, Run does not enter it. It waits instead until Release, or until a
// Kick, which it answers as the machine would, with ExitKicked (the engine
// kicks to deliver an interrupt or a frame, or to stop): the engine's
// boundaries go on, the guest executes nothing.
type holdStepper struct {
	machine.Stepper
	mu   sync.Mutex // protects held and kicked
	cond sync.Cond  // on mu: held or kicked changed
	held bool
	// kicked is a Kick made while held, or a Hold or Release, not yet
	// answered by a Run: the next Run returns ExitKicked, held or not
	// (Kick's contract).
	kicked bool
	// changed receives after each Hold and Release (buffered 1: one
	// pending is enough), for an engine waiting while its guest halts.
	changed chan struct{}
}

func newHoldStepper(s machine.Stepper) *holdStepper {
	h := &holdStepper{Stepper: s, changed: make(chan struct{}, 1)}
	h.cond.L = &h.mu
	return h
}

// HoldChanged implements replay.HoldWatcher.
func (h *holdStepper) HoldChanged() <-chan struct{} { return h.changed }

// notify says Held changed.
func (h *holdStepper) notify() {
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// holdStepperWindows is a holdStepper around a replay.WindowAsker: the
// engine looks for AskWindows, so the wrapper must offer it exactly when
// the machine does.
type holdStepperWindows struct{ *holdStepper }

// AskWindows implements replay.WindowAsker.
func (h holdStepperWindows) AskWindows(on bool) { h.Stepper.(replay.WindowAsker).AskWindows(on) }

// bare is the machine under m's holdStepper, if it has one: what Parts
// shows (ftckpt bench reads the software machine's instruction count).
func bare(m machine.Stepper) machine.Stepper {
	switch h := m.(type) {
	case *holdStepper:
		return h.Stepper
	case holdStepperWindows:
		return h.Stepper
	}
	return m
}

// Run implements machine.Stepper for the engine.
func (h *holdStepper) Run() (machine.Exit, error) {
	h.mu.Lock()
	for h.held && !h.kicked {
		h.cond.Wait()
	}
	if h.kicked {
		h.kicked = false
		h.mu.Unlock()
		return machine.Exit{Kind: machine.ExitKicked}, nil
	}
	h.mu.Unlock()
	return h.Stepper.Run()
}

// Kick implements machine.Stepper; any goroutine may call it.
func (h *holdStepper) Kick() {
	h.mu.Lock()
	if h.held {
		h.kicked = true
		h.cond.Broadcast()
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	h.Stepper.Kick()
}

// Hold stops the guest for the operator: the Run in progress returns at
// once (kicked), and so does the next, so that the engine logs the hold at
// a boundary (replay.EntryHeld); the ones after wait.
func (h *holdStepper) Hold() error {
	h.mu.Lock()
	if h.held {
		h.mu.Unlock()
		return errors.New("the guest is paused already")
	}
	h.held, h.kicked = true, true
	h.mu.Unlock()
	h.Stepper.Kick()
	h.notify()
	return nil
}

// Release lets the guest run again, once the engine has been through a
// boundary (the Run waiting returns kicked), where it logs the release.
func (h *holdStepper) Release() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.held {
		return errors.New("the guest is not paused")
	}
	h.held, h.kicked = false, true
	h.cond.Broadcast()
	h.notify()
	return nil
}

// Held says whether the operator holds the guest.
func (h *holdStepper) Held() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}
