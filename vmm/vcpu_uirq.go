package vmm

import (
	"fmt"
	"time"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// prepareUserspaceInterrupts runs before each KVM_RUN of a machine without
// the in-kernel irqchip (one vCPU). It raises the timer interrupts that came
// due, waits while the guest is halted with nothing to wake it, and injects
// the PIC's pending interrupt with KVM_INTERRUPT when the guest can take it,
// or asks KVM for an exit when it can (the interrupt window). It reports
// false when the vCPU must park instead of entering the guest.
func (v *VCPU) prepareUserspaceInterrupts() bool {
	m, r := v.m, v.runData
	m.pit.Poll(m.clock.Now())
	for v.halted && !m.pic.Pending() {
		if m.pauseReq.Load() {
			return false
		}
		v.waitWhileHalted()
		m.pit.Poll(m.clock.Now())
	}
	v.halted = false
	r.RequestInterruptWindow = 0
	if m.pic.Pending() {
		if r.ReadyForInterruptInjection != 0 && r.IfFlag != 0 {
			if vec, ok := m.pic.Acknowledge(); ok {
				if err := kvmapi.InjectInterrupt(v.fd, vec); err != nil {
					m.fail(fmt.Errorf("vCPU %d: KVM_INTERRUPT vector %d: %w", v.index, vec, err))
					return false
				}
			}
		}
		if m.pic.Pending() {
			r.RequestInterruptWindow = 1
		}
	}
	v.armKickTimer()
	return true
}

// waitWhileHalted blocks until an interrupt may be pending (the PIC woke
// us, or the PIT's deadline passed) or a pause is requested.
func (v *VCPU) waitWhileHalted() {
	m := v.m
	deadline, timed := m.pit.Deadline()
	var t *time.Timer
	if timed {
		t = time.AfterFunc(time.Duration(deadline-min(deadline, m.clock.Now())), m.wakeHalted)
		defer t.Stop()
	}
	m.haltMu.Lock()
	defer m.haltMu.Unlock()
	for !m.pauseReq.Load() && !m.pic.Pending() && !(timed && m.clock.Now() >= deadline) {
		m.haltCond.Wait()
	}
}

// armKickTimer makes the vCPU leave the guest when the PIT's next interrupt
// is due, so it can be injected: a guest that never exits would otherwise
// never see it.
func (v *VCPU) armKickTimer() {
	deadline, ok := v.m.pit.Deadline()
	if !ok {
		v.stopKickTimer()
		return
	}
	d := time.Duration(deadline - min(deadline, v.m.clock.Now()))
	if v.kickTimer == nil {
		v.kickTimer = time.AfterFunc(d, v.kick)
	} else {
		v.kickTimer.Reset(d)
	}
}

func (v *VCPU) stopKickTimer() {
	if v.kickTimer != nil {
		v.kickTimer.Stop()
	}
}
