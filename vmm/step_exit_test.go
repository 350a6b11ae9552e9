package vmm

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// fakeRun is a vCPU's mmapped area as KVM leaves it after an exit: kvm_run,
// then the page KVM puts port I/O data in (data_offset 4096), then more.
type fakeRun []byte

const fakeRunSize = 3 * 4096

func newFakeRun(reason uint32) fakeRun {
	r := make(fakeRun, fakeRunSize)
	binary.LittleEndian.PutUint32(r[kvmapi.RunExitReasonOffset:], reason)
	return r
}

func (r fakeRun) union() []byte { return r[kvmapi.RunExitUnionOffset:] }

func (r fakeRun) io(out bool, size uint8, port uint16, count uint32, dataOff uint64, data []byte) fakeRun {
	u := r.union()
	if out {
		u[kvmapi.RunIODirectionOffset] = kvmapi.KVM_EXIT_IO_OUT
	}
	u[kvmapi.RunIOSizeOffset] = size
	binary.LittleEndian.PutUint16(u[kvmapi.RunIOPortOffset:], port)
	binary.LittleEndian.PutUint32(u[kvmapi.RunIOCountOffset:], count)
	binary.LittleEndian.PutUint64(u[kvmapi.RunIODataOffsetOffset:], dataOff)
	if dataOff < uint64(len(r)) {
		copy(r[dataOff:], data)
	}
	return r
}

func (r fakeRun) mmio(write bool, addr uint64, n uint32, data []byte) fakeRun {
	u := r.union()
	binary.LittleEndian.PutUint64(u[kvmapi.RunMMIOPhysAddrOffset:], addr)
	copy(u[kvmapi.RunMMIODataOffset:], data)
	binary.LittleEndian.PutUint32(u[kvmapi.RunMMIOLenOffset:], n)
	if write {
		u[kvmapi.RunMMIOIsWriteOffset] = 1
	}
	return r
}

func (r fakeRun) debug(exception uint32, pc, dr6 uint64) fakeRun {
	u := r.union()
	binary.LittleEndian.PutUint32(u[kvmapi.RunDebugExceptionOffset:], exception)
	binary.LittleEndian.PutUint64(u[kvmapi.RunDebugPCOffset:], pc)
	binary.LittleEndian.PutUint64(u[kvmapi.RunDebugDR6Offset:], dr6)
	return r
}

func TestDecodeStepExit(t *testing.T) {
	const dr6Low = 0xffff0ff0 // DR6's always-one bits, as KVM reports them
	ok := []struct {
		name string
		run  fakeRun
		want StepExit
	}{
		{"out byte", newFakeRun(uint32(kvm.EXITIO)).io(true, 1, 0x3f8, 1, 0x1000, []byte{'x', 9, 9}),
			StepExit{Reason: StepPIO, Write: true, Addr: 0x3f8, Size: 1, Data: [8]byte{'x'}, dataOff: 0x1000}},
		{"in dword", newFakeRun(uint32(kvm.EXITIO)).io(false, 4, 0x520, 1, 0x1000, []byte{1, 2, 3, 4}),
			StepExit{Reason: StepPIO, Addr: 0x520, Size: 4, dataOff: 0x1000}},
		{"out word at the end of the mapping", newFakeRun(uint32(kvm.EXITIO)).io(true, 2, 0xc010, 1, fakeRunSize-2, []byte{7, 8}),
			StepExit{Reason: StepPIO, Write: true, Addr: 0xc010, Size: 2, Data: [8]byte{7, 8}, dataOff: fakeRunSize - 2}},
		{"mmio write", newFakeRun(uint32(kvm.EXITMMIO)).mmio(true, 0xfee000b0, 4, []byte{1, 2, 3, 4, 5}),
			StepExit{Reason: StepMMIO, Write: true, Addr: 0xfee000b0, Size: 4, Data: [8]byte{1, 2, 3, 4}}},
		{"mmio read", newFakeRun(uint32(kvm.EXITMMIO)).mmio(false, 0xfec00000, 8, []byte{1, 2}),
			StepExit{Reason: StepMMIO, Addr: 0xfec00000, Size: 8}},
		{"hlt", newFakeRun(uint32(kvm.EXITHLT)), StepExit{Reason: StepHalt}},
		{"window", newFakeRun(uint32(kvm.EXITIRQWINDOWOPEN)), StepExit{Reason: StepWindow}},
		{"breakpoint", newFakeRun(uint32(kvm.EXITDEBUG)).debug(1, 0x100234, dr6Low|kvmapi.DR_TRAP0),
			StepExit{Reason: StepDebug, AtBreak: true, DR6: dr6Low | kvmapi.DR_TRAP0}},
		{"single step", newFakeRun(uint32(kvm.EXITDEBUG)).debug(1, 0x100234, dr6Low|kvmapi.DR_STEP),
			StepExit{Reason: StepDebug, Stepped: true, DR6: dr6Low | kvmapi.DR_STEP}},
	}
	for _, c := range ok {
		got, err := decodeStepExit(c.run)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}

	bad := []struct {
		name, want string
		run        fakeRun
	}{
		{"string out", "string I/O", newFakeRun(uint32(kvm.EXITIO)).io(true, 1, 0x3f8, 16, 0x1000, nil)},
		{"string in, count 0", "string I/O", newFakeRun(uint32(kvm.EXITIO)).io(false, 1, 0x3f8, 0, 0x1000, nil)},
		{"io size 3", "access of 3 bytes", newFakeRun(uint32(kvm.EXITIO)).io(true, 3, 0x3f8, 1, 0x1000, nil)},
		{"io data past kvm_run", "outside kvm_run", newFakeRun(uint32(kvm.EXITIO)).io(true, 4, 0x3f8, 1, fakeRunSize-3, nil)},
		{"io data offset wraps", "outside kvm_run", newFakeRun(uint32(kvm.EXITIO)).io(true, 4, 0x3f8, 1, ^uint64(0)-1, nil)},
		{"io data in the header", "outside kvm_run", newFakeRun(uint32(kvm.EXITIO)).io(true, 1, 0x3f8, 1, 8, nil)},
		{"mmio of 0 bytes", "access of 0 bytes", newFakeRun(uint32(kvm.EXITMMIO)).mmio(false, 0xfee00000, 0, nil)},
		{"mmio of 16 bytes", "access of 16 bytes", newFakeRun(uint32(kvm.EXITMMIO)).mmio(true, 0xfee00000, 16, nil)},
		{"software breakpoint", "exception 3", newFakeRun(uint32(kvm.EXITDEBUG)).debug(3, 0x1000, 0)},
		{"shutdown", "triple fault", newFakeRun(uint32(kvm.EXITSHUTDOWN))},
		{"fail entry", "FAIL_ENTRY", newFakeRun(uint32(kvm.EXITFAILENTRY))},
		{"internal error", "INTERNAL_ERROR", newFakeRun(uint32(kvm.EXITINTERNALERROR))},
		{"system event", "SYSTEM_EVENT", newFakeRun(kvmapi.KVM_EXIT_SYSTEM_EVENT)},
		{"unknown", "reason 4242", newFakeRun(4242)},
		{"short kvm_run", "kvm_run of 100 bytes", newFakeRun(uint32(kvm.EXITHLT))[:100]},
	}
	for _, c := range bad {
		got, err := decodeStepExit(c.run)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %+v, %v; want an error with %q", c.name, got, err, c.want)
		}
	}
	if _, err := decodeStepExit(newFakeRun(kvmapi.KVM_EXIT_DIRTY_RING_FULL)); err != errRingFull {
		t.Errorf("dirty ring full: %v, want errRingFull", err)
	}
}

func TestStepExitString(t *testing.T) {
	for _, c := range []struct {
		e    StepExit
		want string
	}{
		{StepExit{Reason: StepPIO, Write: true, Addr: 0x3f8, Size: 1, RIP: 0x1000}, "pio write addr=0x3f8 size=1 rip=0x1000"},
		{StepExit{Reason: StepMMIO, Addr: 0xfee00000, Size: 4, RIP: 0x1000}, "mmio read addr=0xfee00000 size=4 rip=0x1000"},
		{StepExit{Reason: StepDebug, RIP: 0x10, DR6: 0x4000}, "debug rip=0x10 dr6=0x4000"},
		{StepExit{Reason: StepHalt, RIP: 0x11}, "halt rip=0x11"},
		{StepExit{Reason: 99}, "step(99) rip=0x0"},
	} {
		if got := c.e.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.e, got, c.want)
		}
	}
}
