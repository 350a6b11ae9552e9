package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// candidateMSRs are the MSRs a vCPU's state includes where the host can save
// them (see probeMSRs), in restore order: the TSC first, so that KVM
// synchronises the vCPUs' TSCs, and the TSC deadline last, after the LAPIC
// (restored before MSRs) is in TSC-deadline mode.
var candidateMSRs = []uint32{
	0x00000010, // IA32_TSC
	0x0000003b, // IA32_TSC_ADJUST
	0x00000174, // IA32_SYSENTER_CS
	0x00000175, // IA32_SYSENTER_ESP
	0x00000176, // IA32_SYSENTER_EIP
	0x000001a0, // IA32_MISC_ENABLE
	0x00000277, // IA32_PAT
	0x000002ff, // MTRRdefType
	0xc0000081, // STAR
	0xc0000082, // LSTAR
	0xc0000083, // CSTAR
	0xc0000084, // SFMASK
	0xc0000102, // KERNEL_GS_BASE
	0xc0000103, // TSC_AUX
	0x4b564d00, // MSR_KVM_WALL_CLOCK_NEW
	0x4b564d01, // MSR_KVM_SYSTEM_TIME_NEW
	0x4b564d02, // MSR_KVM_ASYNC_PF_EN
	0x4b564d03, // MSR_KVM_STEAL_TIME
	0x4b564d04, // MSR_KVM_PV_EOI_EN
	0x000006e0, // IA32_TSC_DEADLINE
}

const maxSavedMSRs = 64

// probeMSRs returns the candidate MSRs that this host lists in
// KVM_GET_MSR_INDEX_LIST and that vCPU 0 can actually read.
func (m *Machine) probeMSRs() ([]uint32, error) {
	listed, err := kvmapi.MSRIndexList(m.kvmFd)
	if err != nil {
		return nil, err
	}
	onList := map[uint32]bool{}
	for _, i := range listed {
		onList[i] = true
	}
	var out []uint32
	err = m.vcpus[0].do(func() error {
		for _, idx := range candidateMSRs {
			if !onList[idx] {
				continue
			}
			e := []kvmapi.MSREntry{{Index: idx}}
			if kvmapi.GetMSRs(m.vcpus[0].fd, e) == nil {
				out = append(out, idx)
			}
		}
		return nil
	})
	return out, err
}

// vcpuStateFixed is the fixed-size part of a vCPU's saved state. The MSRs,
// the CPUID table and the XSAVE area follow it, NMSRs, NCPUID and XSaveLen
// long.
type vcpuStateFixed struct {
	Flags     uint32
	NMSRs     uint32
	NCPUID    uint32
	XSaveLen  uint32
	MPState   kvm.MPState
	Regs      kvm.Regs
	Sregs     kvm.Sregs
	XCRS      kvm.XCRS
	DebugRegs kvm.DebugRegs
	LAPIC     kvm.LAPICState
	Events    kvm.VCPUEvents
}

// Sizes of the encoded parts of a vCPU's state.
var (
	vcpuStateFixedSize = binary.Size(vcpuStateFixed{})
	cpuidEntrySize     = binary.Size(kvm.CPUIDEntry2{})
	msrEntrySize       = binary.Size(kvmapi.MSREntry{})
)

const (
	vcpuFlagLAPIC  = 1 << 0 // LAPIC is valid (in-kernel irqchip)
	vcpuFlagHalted = 1 << 1 // waiting in HLT (userspace interrupt delivery)

	maxXSaveLen = 1 << 16
)

// vcpuState is a vCPU's whole saved state.
type vcpuState struct {
	vcpuStateFixed
	MSRs  []kvmapi.MSREntry
	CPUID []kvm.CPUIDEntry2
	XSave []byte
}

// ID implements Component.
func (v *VCPU) ID() string { return fmt.Sprintf("vcpu/%d", v.index) }

// StateVersion implements Component.
func (v *VCPU) StateVersion() uint32 { return 1 }

// SaveState implements Component. It runs on the vCPU's thread.
func (v *VCPU) SaveState() ([]byte, error) {
	var out []byte
	err := v.do(func() error {
		if err := v.capture(false); err != nil {
			return err
		}
		out = v.appendSaved(nil)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", v.ID(), err)
	}
	return out, nil
}

// capture reads the vCPU's state from KVM into v.saved, whose buffers it
// reuses: a checkpoint pause allocates nothing here. byRun reads the
// registers, special registers and events with one KVM_RUN instead of three
// GETs (readRegsByRun, and its preconditions).
// Precondition: on the vCPU's thread, which is parked, as are the others.
//
// Order matters: KVM_GET_MP_STATE first, as it may process pending LAPIC
// events (INIT, SIPI) and change the registers and what is pending (as
// Firecracker and QEMU found). The registers and events next, then the rest:
// those GETs only read what no other vCPU can change now, but for the
// LAPIC, which may take posted interrupts into its IRR first (that changes
// no event), and the KVM_RUN of byRun cycles the guest's FPU state through
// the CPU, after which XSAVE may say in its header that SSE is in its
// initial state where it said otherwise before: the same state, other
// bytes, so XSAVE comes after it whichever way the registers are read.
func (v *VCPU) capture(byRun bool) error {
	fd := uintptr(v.fd)
	st := &v.saved
	st.Flags = 0
	if err := kvm.GetMPState(fd, &st.MPState); err != nil {
		return fmt.Errorf("KVM_GET_MP_STATE: %w", err)
	}
	readRegs := v.readRegsByGets
	if byRun {
		readRegs = v.readRegsByRun
	}
	if err := readRegs(st); err != nil {
		return err
	}
	if len(st.XSave) != v.xsaveSize {
		st.XSave = make([]byte, v.xsaveSize)
	}
	if err := kvmapi.GetXSave(v.fd, st.XSave); err != nil {
		return err
	}
	if err := kvm.GetXCRS(fd, &st.XCRS); err != nil {
		return fmt.Errorf("KVM_GET_XCRS: %w", err)
	}
	if err := kvm.GetDebugRegs(fd, &st.DebugRegs); err != nil {
		return fmt.Errorf("KVM_GET_DEBUGREGS: %w", err)
	}
	if v.m.cfg.IRQChip {
		if err := kvm.GetLocalAPIC(fd, &st.LAPIC); err != nil {
			return fmt.Errorf("KVM_GET_LAPIC: %w", err)
		}
		st.Flags |= vcpuFlagLAPIC
	}
	if len(st.MSRs) != len(v.m.savedMSRs) {
		st.MSRs = make([]kvmapi.MSREntry, len(v.m.savedMSRs))
	}
	for i, idx := range v.m.savedMSRs {
		st.MSRs[i] = kvmapi.MSREntry{Index: idx}
	}
	if err := kvmapi.GetMSRs(v.fd, st.MSRs); err != nil {
		return err
	}
	if v.halted {
		st.Flags |= vcpuFlagHalted
	}
	return nil
}

// readRegsByGets reads the registers, special registers and vCPU events
// into st with KVM_GET_REGS, KVM_GET_SREGS and KVM_GET_VCPU_EVENTS.
func (v *VCPU) readRegsByGets(st *vcpuState) error {
	fd := uintptr(v.fd)
	regs, err := kvm.GetRegs(fd)
	if err != nil {
		return fmt.Errorf("KVM_GET_REGS: %w", err)
	}
	st.Regs = *regs
	sregs, err := kvm.GetSregs(fd)
	if err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	st.Sregs = *sregs
	if err := kvm.GetVCPUEvents(fd, &st.Events); err != nil {
		return fmt.Errorf("KVM_GET_VCPU_EVENTS: %w", err)
	}
	return nil
}

// syncedRegParts are the parts of the vCPU's state readRegsByRun has KVM
// store in kvm_run: the host must offer all three (Machine.regsByRun).
const syncedRegParts = kvmapi.KVM_SYNC_X86_REGS | kvmapi.KVM_SYNC_X86_SREGS | kvmapi.KVM_SYNC_X86_EVENTS

// readRegsByRun reads the registers, special registers and vCPU events
// into st with one KVM_RUN that returns at once, kvm_run's register
// synchronisation (KVM_CAP_SYNC_REGS) asked for that KVM_RUN alone: one
// ioctl instead of readRegsByGets' three, each of which costs a load of
// the vCPU (~5 µs on kvm-pvm; a capture by GETs makes nine). KVM stores
// the three as KVM_RUN returns with the functions the GETs call, so they
// are what the GETs would read now (TestKVMRegsByRunMatchGets).
// Precondition: on the vCPU's thread, parked by a pause: its immediate_exit
// was set before the KVM_RUN that returned EINTR, so no I/O waits to be
// completed and this KVM_RUN enters no guest; the machine's regsByRun (the
// LAPIC in the kernel: without it KVM_RUN would first load CR8 from
// kvm_run).
func (v *VCPU) readRegsByRun(st *vcpuState) error {
	valid := v.run[kvmapi.RunValidRegsOffset:]
	binary.LittleEndian.PutUint64(valid, syncedRegParts)
	kicked, err := kvmapi.Run(v.fd)
	binary.LittleEndian.PutUint64(valid, 0) // other exits need not copy them
	if err != nil {
		return fmt.Errorf("reading the registers: %w", err)
	}
	if !kicked {
		return fmt.Errorf("reading the registers: KVM_RUN returned exit reason %d, not EINTR", v.runData.ExitReason)
	}
	regs, sregs, events := syncedRegs(v.run)
	st.Regs, st.Sregs, st.Events = *regs, *sregs, *events
	return nil
}

// appendSaved appends the encoding of what capture read, with the vCPU's
// CPUID table (fixed when the vCPU is made or restored, so encoded then).
// Precondition: capture has run since the vCPU last ran, on its thread or
// before a synchronisation with it.
func (v *VCPU) appendSaved(b []byte) []byte {
	return appendVCPUState(b, &v.saved, v.cpuidEncoded)
}

// setCPUID records the vCPU's CPUID table and its encoding.
func (v *VCPU) setCPUID(c *kvm.CPUID) {
	v.cpuid = c
	v.cpuidEncoded = append([]byte(nil), rawSliceBytes(c.Entries)...)
}

// RestoreState implements Component. It decodes and checks everything
// before the first ioctl, then restores on the vCPU's thread in the order
// KVM needs:
//
//  1. CPUID, before anything that depends on the features it announces;
//  2. MP state first of the rest (it may reset other state);
//  3. REGS, SREGS, XSAVE, XCRS, debug registers;
//  4. LAPIC before MSRs (the TSC deadline MSR needs the LAPIC timer mode);
//  5. MSRs, the TSC first;
//  6. vCPU events last (pending exceptions and interrupts; SREGS would
//     overwrite the pending interrupt otherwise).
func (v *VCPU) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(v.ID(), version, v.StateVersion()); err != nil {
		return err
	}
	st, err := decodeVCPUState(data)
	if err != nil {
		return fmt.Errorf("%s: %w", v.ID(), err)
	}
	if hasLAPIC := st.Flags&vcpuFlagLAPIC != 0; hasLAPIC != v.m.cfg.IRQChip {
		return fmt.Errorf("%s: saved with in-kernel irqchip=%v, this machine has %v: %w", v.ID(), hasLAPIC, v.m.cfg.IRQChip, ErrMismatch)
	}
	if len(st.XSave) != v.xsaveSize {
		return fmt.Errorf("%s: XSAVE area of %d bytes, this host uses %d: %w", v.ID(), len(st.XSave), v.xsaveSize, ErrMismatch)
	}
	err = v.do(func() error { return v.restoreOnThread(st) })
	if err != nil {
		return fmt.Errorf("%s: %w", v.ID(), err)
	}
	return nil
}

func (v *VCPU) restoreOnThread(st *vcpuState) error {
	fd := uintptr(v.fd)
	if err := v.restoreCPUID(st.CPUID); err != nil {
		return err
	}
	if err := kvm.SetMPState(fd, &st.MPState); err != nil {
		return fmt.Errorf("KVM_SET_MP_STATE: %w", err)
	}
	if err := kvm.SetRegs(fd, &st.Regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	if err := kvm.SetSregs(fd, &st.Sregs); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	if err := kvmapi.SetXSave(v.fd, st.XSave); err != nil {
		return err
	}
	if err := kvm.SetXCRS(fd, &st.XCRS); err != nil {
		return fmt.Errorf("KVM_SET_XCRS: %w", err)
	}
	if err := kvm.SetDebugRegs(fd, &st.DebugRegs); err != nil {
		return fmt.Errorf("KVM_SET_DEBUGREGS: %w", err)
	}
	if st.Flags&vcpuFlagLAPIC != 0 {
		if err := kvm.SetLocalAPIC(fd, &st.LAPIC); err != nil {
			return fmt.Errorf("KVM_SET_LAPIC: %w", err)
		}
	}
	if err := kvmapi.SetMSRs(v.fd, st.MSRs); err != nil {
		return err
	}
	if err := kvm.SetVCPUEvents(fd, &st.Events); err != nil {
		return fmt.Errorf("KVM_SET_VCPU_EVENTS: %w", err)
	}
	v.halted = st.Flags&vcpuFlagHalted != 0
	return nil
}

// restoreCPUID gives the vCPU the saved CPUID table. The table is fixed
// when the vCPU is made and KVM (Linux >= 5.16) refuses a different one once
// the vCPU has run, so an equal table (the common case: a machine built
// from the same configuration on the same kind of host) is not set again.
func (v *VCPU) restoreCPUID(entries []kvm.CPUIDEntry2) error {
	if slices.Equal(entries, v.cpuid.Entries) {
		return nil
	}
	cpuid := &kvm.CPUID{Nent: uint32(len(entries)), Entries: entries}
	if err := kvm.SetCPUID2(uintptr(v.fd), cpuid); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2 (the saved CPUID differs from this vCPU's, and KVM cannot change it once the vCPU has run): %w", err)
	}
	v.setCPUID(cpuid)
	return nil
}

// encodeVCPUState encodes st, its CPUID table from st.CPUID.
func encodeVCPUState(st *vcpuState) ([]byte, error) {
	return appendVCPUState(nil, st, rawSliceBytes(st.CPUID)), nil
}

// appendVCPUState appends the encoding of st (state version 1) with cpuid,
// the CPUID entries already encoded: the fixed part (vcpuStateFixed with the
// counts of what follows), the MSRs, the CPUID entries and the XSAVE area,
// little-endian and packed, as binary.Write lays them out (see rawBytes).
func appendVCPUState(b []byte, st *vcpuState, cpuid []byte) []byte {
	st.NMSRs, st.NCPUID, st.XSaveLen = uint32(len(st.MSRs)), uint32(len(cpuid)/cpuidEntrySize), uint32(len(st.XSave))
	b = slices.Grow(b, vcpuStateFixedSize+len(st.MSRs)*msrEntrySize+len(cpuid)+len(st.XSave))
	le := binary.LittleEndian
	b = le.AppendUint32(b, st.Flags)
	b = le.AppendUint32(b, st.NMSRs)
	b = le.AppendUint32(b, st.NCPUID)
	b = le.AppendUint32(b, st.XSaveLen)
	b = le.AppendUint32(b, st.MPState.State)
	b = append(b, rawBytes(&st.Regs)...)
	b = append(b, rawBytes(&st.Sregs)...)
	b = append(b, rawBytes(&st.XCRS)...)
	b = append(b, rawBytes(&st.DebugRegs)...)
	b = append(b, rawBytes(&st.LAPIC)...)
	b = append(b, rawBytes(&st.Events)...)
	b = append(b, rawSliceBytes(st.MSRs)...)
	b = append(b, cpuid...)
	return append(b, st.XSave...)
}

func decodeVCPUState(data []byte) (*vcpuState, error) {
	st := &vcpuState{}
	fixed := vcpuStateFixedSize
	if len(data) < fixed {
		return nil, fmt.Errorf("%w: vCPU state of %d bytes, the fixed part alone is %d", ErrTruncated, len(data), fixed)
	}
	r := bytes.NewReader(data)
	if err := binary.Read(r, binary.LittleEndian, &st.vcpuStateFixed); err != nil {
		return nil, err
	}
	if st.NMSRs > maxSavedMSRs || st.NCPUID > maxCPUIDEntries || st.XSaveLen > maxXSaveLen || st.XSaveLen < kvmapi.XSaveSize {
		return nil, fmt.Errorf("vCPU state: %d MSRs, %d CPUID entries, %d bytes of XSAVE: %w", st.NMSRs, st.NCPUID, st.XSaveLen, ErrMismatch)
	}
	st.MSRs = make([]kvmapi.MSREntry, st.NMSRs)
	st.CPUID = make([]kvm.CPUIDEntry2, st.NCPUID)
	st.XSave = make([]byte, st.XSaveLen)
	want := fixed + binary.Size(st.MSRs) + binary.Size(st.CPUID) + len(st.XSave)
	if len(data) != want {
		return nil, fmt.Errorf("%w: vCPU state of %d bytes, its counts say %d", ErrTruncated, len(data), want)
	}
	for _, part := range []any{st.MSRs, st.CPUID, st.XSave} {
		if err := binary.Read(r, binary.LittleEndian, part); err != nil {
			return nil, err
		}
	}
	return st, nil
}
