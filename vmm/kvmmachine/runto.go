package kvmmachine

import (
	"fmt"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// kvmStepper is what running and landing need of vmm.Stepper (tests use a
// model of it).
type kvmStepper interface {
	Enter(d vmm.Debug) (vmm.StepExit, error)
	// Settle applies a completed access without running the guest, so
	// that RIP is where it resumes.
	Settle() error
	RIP() (uint64, error)
}

// kvmLanding runs the guest for Run and RunTo and keeps what RunTo needs
// between calls. Used by the engine's goroutine only.
//
// RunTo stops at every instruction boundary where the guest is at the
// address: before it executes the instruction there, and also before an
// interrupt injected there is delivered (a kick can stop the primary's
// guest at that point too). At entry it looks at RIP itself. Then, with
// the hardware breakpoint (the default where the KVM honours them), it arms
// DR0 on the address and runs; to execute the instruction it stopped at
// (kvm-pvm ignores RFLAGS.RF) it disarms it, single-steps once and re-arms
// it. With singleStep it single-steps until RIP is the address. Both modes
// stop at exactly the same points.
type kvmLanding struct {
	// singleStep is set by StepperConfig.SingleStep, or where the KVM ignores
	// hardware breakpoints (vmm.ProbeHardwareBreakpoints).
	singleStep bool
	// atBreak is set when the last stop was ExitBreakpoint at breakRIP and
	// the guest has not run since.
	atBreak  bool
	breakRIP uint64
}

// run is Run: the guest runs freely.
func (l *kvmLanding) run(s kvmStepper) (vmm.StepExit, error) {
	l.atBreak = false
	return s.Enter(vmm.Debug{})
}

// delivered notes that an interrupt was injected: the guest has moved on
// from the last breakpoint stop, to the boundary before the delivery.
func (l *kvmLanding) delivered() { l.atBreak = false }

// runTo is RunTo: a StepDebug exit with AtBreak means the guest is at rip.
func (l *kvmLanding) runTo(s kvmStepper, rip uint64) (vmm.StepExit, error) {
	step := l.atBreak && l.breakRIP == rip
	l.atBreak = false
	for {
		if step {
			// One instruction (or the delivery of an injected interrupt)
			// with no breakpoint armed. An exit in it (an access, a HLT, a
			// kick) is the stop; the access completes at the next entry.
			ex, err := s.Enter(vmm.Debug{SingleStep: true})
			if err != nil || ex.Reason != vmm.StepDebug {
				return ex, err
			}
		}
		if err := s.Settle(); err != nil {
			return vmm.StepExit{}, err
		}
		cur, err := s.RIP()
		if err != nil {
			return vmm.StepExit{}, err
		}
		if cur == rip {
			l.atBreak, l.breakRIP = true, rip
			return vmm.StepExit{Reason: vmm.StepDebug, AtBreak: true, RIP: rip}, nil
		}
		if l.singleStep {
			step = true
			continue
		}
		ex, err := s.Enter(vmm.Debug{Break: true, BreakRIP: rip})
		if err != nil || ex.Reason != vmm.StepDebug {
			return ex, err
		}
		if !ex.AtBreak || ex.RIP != rip {
			return vmm.StepExit{}, fmt.Errorf("breakpoint at %#x: debug stop at %#x (DR6 %#x)", rip, ex.RIP, ex.DR6)
		}
		l.atBreak, l.breakRIP = true, rip
		return ex, nil
	}
}

// kvmExit converts a stop of the Stepper to the engine's Exit.
func kvmExit(s vmm.StepExit) (machine.Exit, error) {
	e := machine.Exit{RIP: s.RIP, Addr: s.Addr, Size: s.Size, Data: s.Data}
	switch {
	case s.Reason == vmm.StepPIO && s.Write:
		e.Kind = machine.ExitPIOWrite
	case s.Reason == vmm.StepPIO:
		e.Kind = machine.ExitPIORead
	case s.Reason == vmm.StepMMIO && s.Write:
		e.Kind = machine.ExitMMIOWrite
	case s.Reason == vmm.StepMMIO:
		e.Kind = machine.ExitMMIORead
	case s.Reason == vmm.StepHalt:
		e.Kind = machine.ExitHalt
	case s.Reason == vmm.StepWindow:
		e.Kind = machine.ExitWindow
	case s.Reason == vmm.StepKicked:
		e.Kind = machine.ExitKicked
	case s.Reason == vmm.StepDebug && s.AtBreak:
		e.Kind = machine.ExitBreakpoint
	default:
		return machine.Exit{}, fmt.Errorf("unexpected stop of the guest: %v", s)
	}
	if !e.Kind.IsIO() {
		e.Addr, e.Size, e.Data = 0, 0, [8]byte{}
	}
	return e, nil
}

// kvmStepExit is the Stepper's view of an I/O exit, for Complete.
func kvmStepExit(e *machine.Exit) (vmm.StepExit, error) {
	s := vmm.StepExit{Addr: e.Addr, Size: e.Size, Data: e.Data}
	switch e.Kind {
	case machine.ExitPIORead:
		s.Reason = vmm.StepPIO
	case machine.ExitPIOWrite:
		s.Reason, s.Write = vmm.StepPIO, true
	case machine.ExitMMIORead:
		s.Reason = vmm.StepMMIO
	case machine.ExitMMIOWrite:
		s.Reason, s.Write = vmm.StepMMIO, true
	default:
		return vmm.StepExit{}, fmt.Errorf("completing %v: not an access", *e)
	}
	return s, nil
}
