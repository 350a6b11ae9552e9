package vmm

import (
	"fmt"
	"log/slog"
	"sync"
)

// hwbpState is what a Stepper knows of hardware breakpoints on its KVM. The
// zero value is "not probed yet".
type hwbpState uint8

const (
	hwbpUnknown hwbpState = iota
	hwbpWork              // a breakpoint stops the guest where it is armed
	hwbpIgnored           // KVM_GUESTDBG_USE_HW_BP is accepted and has no effect
)

// HardwareBreakpoints reports whether this host's KVM stops a guest at a
// hardware execute breakpoint (ProbeHardwareBreakpoints, probed once per
// process). Where it does not, Enter refuses Debug.Break, and the first
// single step after Inject stops at the interrupt handler by other means.
func (s *Stepper) HardwareBreakpoints() (bool, error) {
	if s.hwbp == hwbpUnknown {
		hw, err := ProbeHardwareBreakpoints()
		if err != nil {
			return false, err
		}
		s.hwbp = hwbpIgnored
		if hw {
			s.hwbp = hwbpWork
		}
	}
	return s.hwbp == hwbpWork, nil
}

// debugProbe is ProbeHardwareBreakpoints' answer, once found; mu protects
// it.
var debugProbe struct {
	mu    sync.Mutex
	found bool
	hw    bool
}

// ProbeHardwareBreakpoints finds out, the first time it succeeds in the
// process, whether this host's KVM honours KVM_GUESTDBG_USE_HW_BP, and
// returns that answer every time after. Some KVMs accept the setting and
// never stop the guest (QEMU's TCG emulating AMD-V does not arm DR7 on
// VMRUN): landing there by breakpoint would run past the landing. It logs
// a warning once when they do not work. A probe that fails (no KVM, an
// interrupted KVM_CREATE_VM) is tried again at the next call.
//
// The probe is a machine of its own (MinMemory, created and closed here)
// running four instructions in 64-bit mode: it single-steps the first (a
// KVM where that fails cannot land at all: an error), then arms a
// breakpoint on the last, a HLT. Stopping there means breakpoints work;
// halting past it means they are ignored.
func ProbeHardwareBreakpoints() (bool, error) {
	debugProbe.mu.Lock()
	defer debugProbe.mu.Unlock()
	if debugProbe.found {
		return debugProbe.hw, nil
	}
	hw, err := probeHardwareBreakpoints()
	if err != nil {
		return false, fmt.Errorf("probing this KVM's hardware breakpoints: %w", err)
	}
	debugProbe.found, debugProbe.hw = true, hw
	if !hw {
		slog.Warn("this KVM ignores hardware breakpoints (KVM_GUESTDBG_USE_HW_BP): replay lands asynchronous events by single steps, which is slower")
	}
	return hw, nil
}

// probeEntry is where the probe's code is, where bare-metal images start.
const probeEntry = 0x100000

// probeCode is NOP, NOP, NOP, HLT.
var probeCode = []byte{0x90, 0x90, 0x90, opHLT}

func probeHardwareBreakpoints() (hw bool, err error) {
	s, err := NewStepper(Config{VCPUs: 1, MemSize: MinMemory})
	if err != nil {
		return false, err
	}
	defer func() {
		if cerr := s.Close(); err == nil && cerr != nil {
			hw, err = false, cerr
		}
	}()
	m := s.m
	if err := writeBareMetalTables(m.mem, &m.cfg, nil); err != nil {
		return false, err
	}
	if _, err := m.mem.WriteAt(probeCode, probeEntry); err != nil {
		return false, err
	}
	if err := m.onEveryVCPU(func(v *VCPU) error { return v.setBareMetalEntry(probeEntry) }); err != nil {
		return false, err
	}
	ex, err := s.Enter(Debug{SingleStep: true})
	if err != nil {
		return false, err
	}
	if ex.Reason != StepDebug || !ex.Stepped || ex.RIP != probeEntry+1 {
		return false, fmt.Errorf("a single step from %#x stopped at %v, not after one NOP", uint64(probeEntry), ex)
	}
	s.hwbp = hwbpWork // arm it for real: this is the probe
	at := uint64(probeEntry + len(probeCode) - 1)
	if ex, err = s.Enter(Debug{Break: true, BreakRIP: at}); err != nil {
		return false, err
	}
	switch {
	case ex.Reason == StepDebug && ex.AtBreak && ex.RIP == at:
		return true, nil
	case ex.Reason == StepHalt && ex.RIP == at+1:
		return false, nil
	}
	return false, fmt.Errorf("with a breakpoint at the HLT at %#x the guest stopped at %v", at, ex)
}
