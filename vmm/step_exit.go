package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// StepReason says why Stepper.Enter returned. The zero value is invalid.
type StepReason uint8

// Step reasons.
const (
	StepPIO    StepReason = 1 // port I/O: Complete performs it
	StepMMIO   StepReason = 2 // an access to an unbacked guest-physical address: Complete performs it
	StepHalt   StepReason = 3 // HLT (also when a single step executed one)
	StepWindow StepReason = 4 // the interrupt window Inject asked for is open
	StepKicked StepReason = 5 // Kick stopped the guest at an instruction boundary
	StepDebug  StepReason = 6 // the hardware breakpoint fired or the single step is done

	numStepReasons = 7
)

var stepReasonNames = [numStepReasons]string{"invalid", "pio", "mmio", "halt", "window", "kicked", "debug"}

func (r StepReason) String() string {
	if r < numStepReasons {
		return stepReasonNames[r]
	}
	return fmt.Sprintf("step(%d)", uint8(r))
}

// StepExit is one exit of the guest, as Enter returns it: not yet dispatched
// to any device.
type StepExit struct {
	Reason StepReason
	// Write, Addr (port or guest-physical address), Size (1 to 8 bytes) and
	// Data (little-endian in Data[:Size]; for a read, filled by Complete)
	// describe a PIO or MMIO access.
	Write bool
	Addr  uint64
	Size  uint8
	Data  [8]byte
	// RIP is the guest's RIP after the exit (KVM_GET_REGS). For an access
	// it is the accessing instruction's; after HLT, the next one's.
	RIP uint64
	// AtBreak says a StepDebug exit is the hardware breakpoint: the guest is
	// about to execute the instruction at the breakpoint. Stepped says it is
	// the end of a single step. DR6 is the raw debug status.
	AtBreak, Stepped bool
	DR6              uint64

	// dataOff is where KVM wants a PIO read's data in kvm_run.
	dataOff int
}

// IsIO reports whether Complete must perform the exit's access.
func (e *StepExit) IsIO() bool { return e.Reason == StepPIO || e.Reason == StepMMIO }

func (e StepExit) String() string {
	dir := "read"
	if e.Write {
		dir = "write"
	}
	switch {
	case e.IsIO():
		return fmt.Sprintf("%v %s addr=%#x size=%d rip=%#x", e.Reason, dir, e.Addr, e.Size, e.RIP)
	case e.Reason == StepDebug:
		return fmt.Sprintf("debug rip=%#x dr6=%#x", e.RIP, e.DR6)
	}
	return fmt.Sprintf("%v rip=%#x", e.Reason, e.RIP)
}

// errRingFull is decodeStepExit's answer to KVM_EXIT_DIRTY_RING_FULL: not a
// stop of the guest, but work for the dirty-ring collector before it goes on.
var errRingFull = errors.New("dirty ring full")

// decodeStepExit reads the exit KVM_RUN left in run (the vCPU's mmapped
// kvm_run) without acting on it. It refuses what a single-vCPU machine
// without the in-kernel irqchip cannot step: string I/O (REP INS/OUTS,
// count > 1), which one Exit cannot carry, and every exit that means the
// guest is broken.
func decodeStepExit(run []byte) (StepExit, error) {
	if len(run) < kvmapi.RunExitUnionOffset+256 {
		return StepExit{}, fmt.Errorf("kvm_run of %d bytes", len(run))
	}
	le := binary.LittleEndian
	u := run[kvmapi.RunExitUnionOffset:]
	reason := le.Uint32(run[kvmapi.RunExitReasonOffset:])
	switch kvm.ExitType(reason) {
	case kvm.EXITIO:
		size := int(u[kvmapi.RunIOSizeOffset])
		port := le.Uint16(u[kvmapi.RunIOPortOffset:])
		count := le.Uint32(u[kvmapi.RunIOCountOffset:])
		off := le.Uint64(u[kvmapi.RunIODataOffsetOffset:])
		switch {
		case size != 1 && size != 2 && size != 4:
			return StepExit{}, fmt.Errorf("KVM_EXIT_IO: port %#x, access of %d bytes", port, size)
		case count != 1:
			return StepExit{}, fmt.Errorf("KVM_EXIT_IO: string I/O (port %#x, %d elements): not supported when stepping", port, count)
		case off < kvmapi.RunExitUnionOffset || off > uint64(len(run)-size):
			return StepExit{}, fmt.Errorf("KVM_EXIT_IO: port %#x, data offset %d outside kvm_run", port, off)
		}
		e := StepExit{Reason: StepPIO, Write: u[kvmapi.RunIODirectionOffset] == kvmapi.KVM_EXIT_IO_OUT, Addr: uint64(port), Size: uint8(size), dataOff: int(off)}
		if e.Write {
			copy(e.Data[:size], run[off:])
		}
		return e, nil
	case kvm.EXITMMIO:
		n := le.Uint32(u[kvmapi.RunMMIOLenOffset:])
		addr := le.Uint64(u[kvmapi.RunMMIOPhysAddrOffset:])
		if n == 0 || n > 8 {
			return StepExit{}, fmt.Errorf("KVM_EXIT_MMIO: access of %d bytes at %#x", n, addr)
		}
		e := StepExit{Reason: StepMMIO, Write: u[kvmapi.RunMMIOIsWriteOffset] != 0, Addr: addr, Size: uint8(n)}
		if e.Write {
			copy(e.Data[:n], u[kvmapi.RunMMIODataOffset:])
		}
		return e, nil
	case kvm.EXITHLT:
		return StepExit{Reason: StepHalt}, nil
	case kvm.EXITIRQWINDOWOPEN:
		return StepExit{Reason: StepWindow}, nil
	case kvm.EXITDEBUG:
		var d kvmapi.DebugExitArch
		if _, err := binary.Decode(u, le, &d); err != nil {
			return StepExit{}, fmt.Errorf("KVM_EXIT_DEBUG: %w", err)
		}
		if d.Exception != 1 { // #DB; #BP (3) would be a software breakpoint, never set
			return StepExit{}, fmt.Errorf("KVM_EXIT_DEBUG: exception %d at %#x", d.Exception, d.PC)
		}
		return StepExit{Reason: StepDebug, AtBreak: d.DR6&kvmapi.DR_TRAP0 != 0, Stepped: d.DR6&kvmapi.DR_STEP != 0, DR6: d.DR6}, nil
	case kvmapi.KVM_EXIT_DIRTY_RING_FULL:
		return StepExit{}, errRingFull
	case kvm.EXITSHUTDOWN:
		return StepExit{}, errors.New("guest shut down (triple fault)")
	case kvm.EXITFAILENTRY:
		return StepExit{}, fmt.Errorf("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason %#x", le.Uint64(u))
	case kvm.EXITINTERNALERROR:
		return StepExit{}, fmt.Errorf("KVM_EXIT_INTERNAL_ERROR: suberror %d", le.Uint32(u))
	case kvmapi.KVM_EXIT_SYSTEM_EVENT:
		return StepExit{}, fmt.Errorf("KVM_EXIT_SYSTEM_EVENT type %d", le.Uint32(u))
	}
	return StepExit{}, fmt.Errorf("unhandled KVM exit reason %d", reason)
}
