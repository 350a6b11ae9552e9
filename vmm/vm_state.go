package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
)

// The chip ids of KVM_GET_IRQCHIP.
const (
	irqchipPICMaster = 0
	irqchipPICSlave  = 1
	irqchipIOAPIC    = 2
)

// vmComponent is the per-VM kernel state: the in-kernel PIC pair, IOAPIC and
// PIT (with the irqchip), and the KVM clock.
type vmComponent struct{ m *Machine }

type vmState struct {
	Flags                       uint32 // vcpuFlagLAPIC: irqchip state is valid
	PICMaster, PICSlave, IOAPIC kvm.IRQChip
	PIT                         kvm.PITState2
	Clock                       kvm.ClockData
}

// ID implements Component.
func (c *vmComponent) ID() string { return "vm" }

// StateVersion implements Component.
func (c *vmComponent) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (c *vmComponent) SaveState() ([]byte, error) {
	vm := uintptr(c.m.vmFd)
	var st vmState
	if c.m.cfg.IRQChip {
		st.Flags |= vcpuFlagLAPIC
		for _, chip := range []struct {
			id  uint32
			dst *kvm.IRQChip
		}{{irqchipPICMaster, &st.PICMaster}, {irqchipPICSlave, &st.PICSlave}, {irqchipIOAPIC, &st.IOAPIC}} {
			chip.dst.ChipID = chip.id
			if err := kvm.GetIRQChip(vm, chip.dst); err != nil {
				return nil, fmt.Errorf("KVM_GET_IRQCHIP %d: %w", chip.id, err)
			}
		}
		if err := kvm.GetPIT2(vm, &st.PIT); err != nil {
			return nil, fmt.Errorf("KVM_GET_PIT2: %w", err)
		}
	}
	if err := kvm.GetClock(vm, &st.Clock); err != nil {
		return nil, fmt.Errorf("KVM_GET_CLOCK: %w", err)
	}
	return appendVMState(make([]byte, 0, vmStateSize), &st), nil
}

var vmStateSize = binary.Size(vmState{})

// appendVMState appends st encoded as encodePlain does (binary.Write's
// packed layout), from the memory images of its parts (see rawBytes): the
// reflection of binary.Write costs tens of µs for the irqchips' bytes, in
// the checkpoint pause.
func appendVMState(b []byte, st *vmState) []byte {
	b = binary.LittleEndian.AppendUint32(b, st.Flags)
	b = append(b, rawBytes(&st.PICMaster)...)
	b = append(b, rawBytes(&st.PICSlave)...)
	b = append(b, rawBytes(&st.IOAPIC)...)
	b = append(b, rawBytes(&st.PIT)...)
	return append(b, rawBytes(&st.Clock)...)
}

// RestoreState implements Component: irqchips, then PIT, then the clock.
func (c *vmComponent) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(c.ID(), version, c.StateVersion()); err != nil {
		return err
	}
	var st vmState
	if err := decodePlain(data, &st); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if has := st.Flags&vcpuFlagLAPIC != 0; has != c.m.cfg.IRQChip {
		return fmt.Errorf("vm: saved with in-kernel irqchip=%v, this machine has %v: %w", has, c.m.cfg.IRQChip, ErrMismatch)
	}
	// Without the in-kernel irqchip the chips are not saved (all zero).
	if c.m.cfg.IRQChip && (st.PICMaster.ChipID != irqchipPICMaster || st.PICSlave.ChipID != irqchipPICSlave || st.IOAPIC.ChipID != irqchipIOAPIC) {
		return fmt.Errorf("vm: irqchip ids %d/%d/%d: %w", st.PICMaster.ChipID, st.PICSlave.ChipID, st.IOAPIC.ChipID, ErrMismatch)
	}
	vm := uintptr(c.m.vmFd)
	if c.m.cfg.IRQChip {
		for _, chip := range []*kvm.IRQChip{&st.PICMaster, &st.PICSlave, &st.IOAPIC} {
			if err := kvm.SetIRQChip(vm, chip); err != nil {
				return fmt.Errorf("KVM_SET_IRQCHIP %d: %w", chip.ChipID, err)
			}
		}
		if err := kvm.SetPIT2(vm, &st.PIT); err != nil {
			return fmt.Errorf("KVM_SET_PIT2: %w", err)
		}
	}
	clock := kvm.ClockData{Clock: st.Clock.Clock}
	if err := kvm.SetClock(vm, &clock); err != nil {
		return fmt.Errorf("KVM_SET_CLOCK: %w", err)
	}
	return nil
}
