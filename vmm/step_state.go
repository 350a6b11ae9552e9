package vmm

import (
	"fmt"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// SetTimeSource makes now (nanoseconds, never decreasing) the guest clock's
// and so the PIT's only time source, unshifted: guest time is now(). It is
// called only while Complete performs an access to the clock or PIT ports;
// at any other time (SaveState, RestoreState) the clock uses the last value
// it returned, so only the guest's own reads consume time, in the guest's
// order.
func (s *Stepper) SetTimeSource(now func() uint64) {
	c := s.m.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	s.now = now
	c.now = s.clockNow
	c.base = 0
}

// clockNow is the clock's time source after SetTimeSource. Called with the
// clock's mutex held, by the owner's goroutine (Complete) or by SaveState's
// while the owner waits.
func (s *Stepper) clockNow() time.Duration {
	if s.inIO {
		s.lastNow = s.now()
	}
	return time.Duration(s.lastNow)
}

// SaveState is Machine.SaveState for a stepped machine. An access Complete
// performed is applied to the vCPU first (KVM keeps its completion outside
// the state it lets userspace read); an exit awaiting Complete is refused.
func (s *Stepper) SaveState() ([]byte, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	if s.hasPending {
		return nil, fmt.Errorf("saving state: the %v exit was not completed", s.pending)
	}
	if err := s.Settle(); err != nil {
		return nil, fmt.Errorf("saving state: %w", err)
	}
	return s.m.SaveState()
}

// RestoreState is Machine.RestoreState for a stepped machine: it drops any
// exit in progress, loads data, continues guest time from the saved clock
// (with the time source's scale), clears guest debugging and re-reads what
// KVM holds outside the state (a queued interrupt, kvm_run's interrupt
// fields). If it fails the machine is in an undefined state.
func (s *Stepper) RestoreState(data []byte) error {
	if err := s.usable(); err != nil {
		return err
	}
	if s.hasPending || s.completing {
		// KVM would apply the old exit's completion on top of the new state.
		s.hasPending = false
		if err := s.v.do(s.settle); err != nil {
			return fmt.Errorf("restoring state: %w", err)
		}
	}
	if err := s.m.RestoreState(data); err != nil {
		return err
	}
	c := s.m.clock
	c.mu.Lock()
	if s.now != nil {
		c.base, s.lastNow = 0, c.st.Now
	}
	c.mu.Unlock()
	return s.v.do(func() error {
		s.debug, s.regsOK = Debug{}, false
		if err := kvmapi.SetGuestDebug(s.v.fd, 0, [8]uint64{}); err != nil {
			return err
		}
		var ev kvm.VCPUEvents
		if err := kvm.GetVCPUEvents(uintptr(s.v.fd), &ev); err != nil {
			return fmt.Errorf("KVM_GET_VCPU_EVENTS: %w", err)
		}
		s.injected, s.injectedVec = ev.I.Inject != 0, ev.I.Nr
		return s.settle()
	})
}

// stepComponent is the Stepper's own state in the machine's: whether an
// interrupt-window exit is requested (kvm_run, outside KVM's state).
type stepComponent struct{ s *Stepper }

type stepState struct {
	RequestWindow uint8
}

var _ Device = stepComponent{}

// Quiesce implements Quiescer. Nothing to do: a stepped machine is never
// paused (Pause refuses it), and only the Stepper's owner drives it.
func (c stepComponent) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (c stepComponent) Wake() {}

// ID implements Component.
func (c stepComponent) ID() string { return "stepper" }

// StateVersion implements Component.
func (c stepComponent) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (c stepComponent) SaveState() ([]byte, error) {
	var st stepState
	if c.s.wantWindow {
		st.RequestWindow = 1
	}
	return encodePlain(&st)
}

// RestoreState implements Component.
func (c stepComponent) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(c.ID(), version, c.StateVersion()); err != nil {
		return err
	}
	var st stepState
	if err := decodePlain(data, &st); err != nil {
		return fmt.Errorf("stepper: %w", err)
	}
	if st.RequestWindow > 1 {
		return fmt.Errorf("stepper: window request %d: %w", st.RequestWindow, ErrMismatch)
	}
	c.s.setWindow(st.RequestWindow == 1)
	return nil
}
