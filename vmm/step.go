package vmm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// ErrPoweredOff is returned (wrapped, with the status) by Stepper.Complete
// when the access turned the machine off, and by every later call.
var ErrPoweredOff = errors.New("guest powered off")

// Stepper drives a single-vCPU machine without the in-kernel irqchip one
// exit at a time, for deterministic replay: Enter runs the guest to its next
// exit and returns it undispatched; Complete performs an I/O exit's access
// through the machine's bus; Inject hands the userspace PIC's interrupt to
// the vCPU. Nothing runs in between: no vCPU loop, no timer, no backend.
//
// A stepping machine is never started. Start, Pause and Resume belong to
// free-running machines; a Stepper refuses, with an error saying so, a
// machine that was started. Every ioctl on the vCPU runs on its locked
// thread (VCPU.do).
//
// Kick may be called from any goroutine; every other method from one
// goroutine at a time (the owner's).
type Stepper struct {
	m *Machine
	v *VCPU
	// kick is the Kick handshake over kvm_run's first word.
	kick kickState

	// closeMu orders Kick against Close, after which kvm_run is unmapped;
	// it protects closed.
	closeMu sync.Mutex
	closed  bool

	// The fields below belong to the owner; the vCPU thread uses them only
	// inside do, while the owner waits.

	// pending is the I/O exit awaiting Complete, if hasPending.
	pending    StepExit
	hasPending bool
	// completing is set between Complete and the next KVM_RUN, which
	// applies the access to the vCPU (advances RIP, loads RAX).
	completing bool
	// fresh says kvm_run's ready_for_interrupt_injection and if_flag
	// describe the vCPU as it is (KVM writes them at the end of KVM_RUN;
	// creation and RestoreState make them stale).
	fresh bool
	// regs are the registers after the last exit, if regsOK.
	regs   kvm.Regs
	regsOK bool
	// injected is set while an interrupt queued with KVM_INTERRUPT may not
	// have been delivered yet; injectedVec is its vector.
	injected    bool
	injectedVec uint8
	// wantWindow is whether Inject wants an interrupt-window exit (part of
	// the saved state); noWindows keeps KVM from being asked for it
	// (AskWindows).
	wantWindow, noWindows bool
	// debug is the guest-debug setting in effect (zero: none).
	debug Debug
	// hwbp says whether this KVM honours hardware breakpoints, once known
	// (HardwareBreakpoints).
	hwbp hwbpState
	// now is the time source (SetTimeSource); inIO is set while Complete
	// runs a device, the only time it is read; lastNow is its last answer.
	now     func() uint64
	inIO    bool
	lastNow uint64
}

// NewStepper builds a machine (New) to be driven by a Stepper. cfg must have
// one vCPU and no in-kernel irqchip: interrupts go through the userspace PIC
// and PIT, which the Stepper's owner drives. Attach devices and load the
// guest on Machine() before the first Enter; close with Stepper.Close.
func NewStepper(cfg Config) (*Stepper, error) {
	if cfg.IRQChip {
		return nil, errors.New("a stepped machine takes its interrupts from the userspace PIC: Config.IRQChip must be false")
	}
	if cfg.VCPUs != 1 {
		return nil, fmt.Errorf("a stepped machine has 1 vCPU, not %d", cfg.VCPUs)
	}
	m, err := New(cfg)
	if err != nil {
		return nil, err
	}
	m.stepped = true
	s := &Stepper{m: m, v: m.vcpus[0]}
	s.kick.word = runWord(s.v.run)
	if err := m.attach(stepComponent{s}); err != nil {
		m.Close()
		return nil, err
	}
	return s, nil
}

// Machine returns the machine, to attach devices, load the guest and read
// memory. Do not Start, Pause, Resume or RestoreState it (use the Stepper's).
func (s *Stepper) Machine() *Machine { return s.m }

// Close releases the machine. Kick is harmless afterwards.
func (s *Stepper) Close() error {
	s.closeMu.Lock()
	s.closed = true
	s.closeMu.Unlock()
	return s.m.Close()
}

// Kick makes the Enter in progress, or else the next one, return StepKicked
// promptly, at an instruction boundary (any I/O Complete performed is
// applied first). Any goroutine may call it.
func (s *Stepper) Kick() {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return
	}
	s.kick.kick()
	s.v.kick()
}

// usable says why the machine cannot be stepped, or nil.
func (s *Stepper) usable() error {
	s.closeMu.Lock()
	closed := s.closed
	s.closeMu.Unlock()
	if closed {
		return errors.New("stepper is closed")
	}
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case stateCreated:
		return nil
	case stateStopped:
		if m.stopErr == nil {
			return fmt.Errorf("%w with status %d", ErrPoweredOff, m.stopStatus)
		}
		return m.stopReasonLocked()
	}
	return fmt.Errorf("machine is %v: a stepped machine is never started (Start/Pause/Resume and Stepper are exclusive)", m.state)
}

// Enter runs the guest, as d says, until its next exit and returns it
// without dispatching it. A PIO or MMIO exit must be Completed before the
// next Enter; after StepHalt, Inject must deliver an interrupt first.
// StepKicked means Kick stopped it; other signals are absorbed. A free
// run's (d zero) kicked stop is never inside an interrupt shadow (see
// leaveShadow), so a breakpoint or single steps can stop there again.
func (s *Stepper) Enter(d Debug) (StepExit, error) {
	if err := s.usable(); err != nil {
		return StepExit{}, err
	}
	if s.hasPending {
		return StepExit{}, fmt.Errorf("the %v exit was not completed", s.pending)
	}
	if s.v.halted {
		return StepExit{}, errors.New("the guest is halted in HLT: Inject must deliver an interrupt before it runs")
	}
	if d.Break && d.SingleStep {
		return StepExit{}, errors.New("a hardware breakpoint and a single step at once: this KVM ignores RFLAGS.RF, so step past a breakpoint with it disarmed")
	}
	if d.Break || d.SingleStep && s.injected {
		hw, err := s.HardwareBreakpoints()
		if err != nil {
			return StepExit{}, err
		}
		if d.Break && !hw {
			return StepExit{}, errors.New("this KVM ignores hardware breakpoints (KVM_GUESTDBG_USE_HW_BP, probed): land by single steps")
		}
	}
	var ex StepExit
	if err := s.v.do(func() (err error) { ex, err = s.enterOnThread(d); return err }); err != nil {
		return StepExit{}, fmt.Errorf("vCPU 0: %w", err)
	}
	if ex.IsIO() {
		s.pending, s.hasPending = ex, true
	}
	return ex, nil
}

// enterOnThread is Enter on the vCPU's thread.
func (s *Stepper) enterOnThread(d Debug) (StepExit, error) {
	free := d == (Debug{})
	if d.SingleStep && s.injected {
		return s.deliverInjected()
	}
	if d.SingleStep && s.completing {
		// The step is the access. KVMs differ on where it ends otherwise:
		// kvm-pvm advances RIP past an OUT before exiting, so the next
		// trap comes after the instruction that follows it.
		return s.completeStep()
	}
	if d.SingleStep {
		rip, err := s.rip()
		if err != nil {
			return StepExit{}, err
		}
		code, err := s.codeAt(rip)
		if err != nil {
			return StepExit{}, err
		}
		if haltsNext(code) {
			d = Debug{} // run it: see Debug.SingleStep
		}
	}
	if err := s.applyDebug(d); err != nil {
		return StepExit{}, err
	}
	ex, err := s.runOnce()
	if err != nil {
		return StepExit{}, err
	}
	if ex.Reason == StepHalt {
		s.v.halted = true
	}
	if ex.Reason == StepKicked && free {
		return s.leaveShadow(ex)
	}
	return ex, nil
}

// maxShadowSteps bounds leaveShadow: a shadow lasts one instruction, and
// only a guest chaining MOV SS (or POP SS) instructions opens a new one at
// each.
const maxShadowSteps = 4

// leaveShadow moves the kicked stop ex out of an interrupt shadow: the
// instruction after an STI that set IF, or after a MOV SS or POP SS. A
// replay may not be able to stop there: single steps run an STI and the
// HLT after it as one (haltsNext), and a MOV SS holds debug exceptions off
// for the next instruction. So the guest is stepped on until it is out of
// the shadow, and the stop is named there; an exit the shadowed instruction
// causes (its access, its HLT) is the stop instead, as it would be had the
// kick come later. A single step leaks the trap flag into what the stepped
// instruction saves of RFLAGS (Debug.SingleStep): a PUSHF right after an
// STI would. Precondition: on the vCPU's thread.
func (s *Stepper) leaveShadow(ex StepExit) (StepExit, error) {
	for range maxShadowSteps {
		if s.injected {
			return ex, nil // a delivery is due here: no shadow
		}
		shadow, err := s.inShadow()
		if err != nil || !shadow {
			return ex, err
		}
		step, err := s.enterOnThread(Debug{SingleStep: true})
		if err != nil {
			return StepExit{}, err
		}
		switch step.Reason {
		case StepDebug:
			ex = StepExit{Reason: StepKicked, RIP: step.RIP}
		case StepKicked:
			ex = step // kicked again before the step: still in the shadow
		default:
			return step, nil
		}
	}
	return ex, nil
}

// inShadow reports whether the vCPU is in an interrupt shadow (after an
// STI or a load of SS), as KVM_GET_VCPU_EVENTS says. Precondition: on the
// vCPU's thread.
func (s *Stepper) inShadow() (bool, error) {
	var ev kvm.VCPUEvents
	if err := kvm.GetVCPUEvents(uintptr(s.v.fd), &ev); err != nil {
		return false, fmt.Errorf("KVM_GET_VCPU_EVENTS: %w", err)
	}
	return ev.I.Shadow != 0, nil
}

// completeStep is a single step right after Complete: KVM applies the
// access (settle) and the guest stops after it, or at a kick that was
// pending. Precondition: on the vCPU's thread; s.completing.
func (s *Stepper) completeStep() (StepExit, error) {
	if err := s.settle(); err != nil {
		return StepExit{}, err
	}
	rip, err := s.rip()
	if err != nil {
		return StepExit{}, err
	}
	if s.kick.req.Swap(false) {
		return StepExit{Reason: StepKicked, RIP: rip}, nil
	}
	return StepExit{Reason: StepDebug, Stepped: true, RIP: rip}, nil
}

// runOnce enters the guest until an exit or a kick and records the
// registers after it. Precondition: on the vCPU's thread.
func (s *Stepper) runOnce() (StepExit, error) {
	var ex StepExit
	for {
		kicked, err := s.kick.enter(func() (bool, error) { return kvmapi.Run(s.v.fd) })
		s.completing, s.fresh, s.regsOK = false, true, false
		if err != nil {
			return StepExit{}, err
		}
		if kicked {
			ex = StepExit{Reason: StepKicked}
			break
		}
		ex, err = decodeStepExit(s.v.run)
		if errors.Is(err, errRingFull) {
			if err := s.m.dirtyRingFull(s.v.index); err != nil {
				return StepExit{}, err
			}
			continue
		}
		if err != nil {
			return StepExit{}, err
		}
		break
	}
	if s.injected {
		var ev kvm.VCPUEvents
		if err := kvm.GetVCPUEvents(uintptr(s.v.fd), &ev); err != nil {
			return StepExit{}, fmt.Errorf("KVM_GET_VCPU_EVENTS: %w", err)
		}
		s.injected = ev.I.Inject != 0
	}
	rip, err := s.rip()
	if err != nil {
		return StepExit{}, err
	}
	ex.RIP = rip
	return ex, nil
}

// rip returns the guest's RIP, reading the registers if the cache is stale.
// Precondition: on the vCPU's thread.
func (s *Stepper) rip() (uint64, error) {
	if !s.regsOK {
		regs, err := kvm.GetRegs(uintptr(s.v.fd))
		if err != nil {
			return 0, fmt.Errorf("KVM_GET_REGS: %w", err)
		}
		s.regs, s.regsOK = *regs, true
	}
	return s.regs.RIP, nil
}

// Complete performs the access of e, the I/O exit Enter returned last,
// through the machine's bus (MMIO: nothing is mapped, so reads see all ones
// and writes are dropped); for a read it fills e.Data. The vCPU takes the
// result at its next entry. Devices read the time source only here.
func (s *Stepper) Complete(e *StepExit) error {
	if err := s.usable(); err != nil {
		return err
	}
	p := &s.pending
	if !s.hasPending {
		return errors.New("no exit awaits completion")
	}
	if e.Reason != p.Reason || e.Write != p.Write || e.Addr != p.Addr || e.Size != p.Size {
		return fmt.Errorf("completing %v, but the exit awaiting completion is %v", *e, *p)
	}
	s.hasPending, s.completing = false, true
	data := p.Data[:p.Size]
	switch {
	case p.Reason == StepPIO:
		s.inIO = true
		s.m.bus.PIO(uint16(p.Addr), data, p.Write)
		s.inIO = false
		if !p.Write {
			copy(s.v.run[p.dataOff:], data)
		}
	case !p.Write:
		for i := range data {
			data[i] = 0xff
		}
		copy(s.v.run[kvmapi.RunExitUnionOffset+kvmapi.RunMMIODataOffset:], data)
	}
	e.Data = p.Data
	return s.usable() // the access may have turned the machine off
}

// Halted reports whether the guest waits in HLT for an interrupt.
func (s *Stepper) Halted() bool { return s.v.halted }

// Settle applies the access Complete performed to the vCPU (KVM does it at
// the next KVM_RUN; this one returns at once), so that the registers are
// where the guest resumes, before an injected interrupt is delivered. The
// guest executes nothing. It does nothing if there is no such access.
func (s *Stepper) Settle() error {
	if !s.completing {
		return nil
	}
	if err := s.usable(); err != nil {
		return err
	}
	return s.v.do(s.settle)
}

// RIP returns the guest's RIP (before an access Complete performed is
// applied: see Settle).
func (s *Stepper) RIP() (uint64, error) {
	var rip uint64
	err := s.onThreadIfStale(func() (err error) { rip, err = s.rip(); return err })
	return rip, err
}

// RegsHash hashes the guest's general-purpose registers, RIP and RFLAGS
// (see HashRegs).
func (s *Stepper) RegsHash() (uint64, error) {
	if err := s.onThreadIfStale(func() error { _, err := s.rip(); return err }); err != nil {
		return 0, err
	}
	return HashRegs(&s.regs), nil
}

// onThreadIfStale runs fn on the vCPU's thread unless the register cache
// is valid, in which case fn has nothing to read.
func (s *Stepper) onThreadIfStale(fn func() error) error {
	if s.regsOK {
		return fn()
	}
	if err := s.usable(); err != nil {
		return err
	}
	return s.v.do(fn)
}

// TimerDeadline is the guest time at which the PIT next raises IRQ 0.
func (s *Stepper) TimerDeadline() (uint64, bool) { return s.m.pit.Deadline() }

// PollTimers raises the PIT's interrupt if it is due by guest time now.
func (s *Stepper) PollTimers(now uint64) { s.m.pit.Poll(now) }
