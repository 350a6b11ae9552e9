package vmm

import (
	"fmt"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// Inject hands the PIC's highest-priority pending interrupt to the vCPU
// (KVM_INTERRUPT, delivered at its next entry) if the guest can take one
// now, and otherwise, if one is pending, asks KVM for a StepWindow exit
// when it can. It reports whether it injected one; that ends a HLT.
//
// Whether the guest can take one is what KVM said at the end of the last
// KVM_RUN (kvm_run.ready_for_interrupt_injection and if_flag), a function
// of the vCPU's state, so the answer is deterministic. Until an injected
// interrupt is delivered no other is injected.
func (s *Stepper) Inject() (bool, error) {
	if err := s.usable(); err != nil {
		return false, err
	}
	pic := s.m.pic
	if !pic.Pending() {
		s.setWindow(false)
		return false, nil
	}
	if !s.fresh {
		if err := s.v.do(s.settle); err != nil {
			return false, err
		}
	}
	r := s.v.runData
	injected := false
	if !s.injected && r.ReadyForInterruptInjection != 0 && r.IfFlag != 0 {
		if vec, ok := pic.Acknowledge(); ok {
			err := s.v.do(func() error { return kvmapi.InjectInterrupt(s.v.fd, vec) })
			if err != nil {
				return false, err
			}
			s.injected, s.injectedVec, s.v.halted = true, vec, false
			injected = true
		}
	}
	s.setWindow(pic.Pending())
	return injected, nil
}

// setWindow records whether an interrupt-window exit is wanted and asks
// KVM for one unless AskWindows(false).
func (s *Stepper) setWindow(on bool) {
	s.wantWindow = on
	s.kick.setWindow(on && !s.noWindows)
}

// AskWindows says whether Inject may ask KVM for an interrupt-window exit
// (the default), and applies it to the request in effect. Where a KVM
// reports an opened window is not deterministic (kvm-pvm notices a window
// the guest opened with IRET only at its next exit of any kind), so a
// replay backup, which takes interrupts only where the log says, turns the
// request off. The saved state keeps what Inject wanted either way.
func (s *Stepper) AskWindows(on bool) {
	s.noWindows = !on
	s.setWindow(s.wantWindow)
}

// settle enters KVM_RUN with immediate_exit set: KVM applies an access
// Complete performed and refreshes kvm_run's interrupt fields, and the
// guest executes nothing. Under a single step, applying the access ends
// the step: KVM reports that (KVM_EXIT_DEBUG) instead of EINTR.
// Precondition: on the vCPU's thread; no exit awaits Complete (KVM would
// complete it with whatever is in kvm_run).
func (s *Stepper) settle() error {
	s.kick.forceImmediateExit()
	kicked, err := kvmapi.Run(s.v.fd)
	if err != nil {
		return err
	}
	if !kicked {
		ex, err := decodeStepExit(s.v.run)
		if err != nil || ex.Reason != StepDebug || !ex.Stepped {
			return fmt.Errorf("KVM_RUN with immediate_exit returned an exit (%v, %v) instead of EINTR", ex, err)
		}
	}
	s.completing, s.fresh, s.regsOK = false, true, false
	return nil
}
