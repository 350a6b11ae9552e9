package vmm

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// PCI configuration mechanism #1: the guest writes a config address to
// 0xCF8 and reads or writes the addressed dword through 0xCFC-0xCFF. There is
// one bus (0), the host bridge at device 0 and virtio functions at 1, 2, ….
// BARs sit at fixed places: a BAR write of all ones reads back the size
// mask (the sizing protocol), any other write leaves the BAR where it is.
const (
	PortPCIConfigAddr = 0xcf8
	PortPCIConfigData = 0xcfc

	pciMaxDevices = 8

	pciVendorIntel     = 0x8086
	pciDeviceI440FX    = 0x1237
	pciVendorVirtio    = 0x1af4
	pciClassHostBridge = 0x060000
	pciClassEthernet   = 0x020000
	pciClassStorage    = 0x010000 // SCSI storage controller, as QEMU's legacy virtio-blk

	pciCommandMask    = 0x0407 // I/O, memory, bus master, INTx disable
	pciCommandIO      = 0x0001
	pciBARIO          = 0x1
	pciConfigSize     = 256
	pciHeaderTypeNorm = 0
)

// pciIdentity is a function's fixed configuration: what it is and where its
// BAR and interrupt are.
type pciIdentity struct {
	vendor, device       uint16
	subVendor, subDevice uint16
	class                uint32 // class << 16 | subclass << 8 | prog-if
	ioBase, ioSize       uint16 // BAR0, an I/O BAR; size 0: no BAR
	irq                  uint8  // legacy IRQ (interrupt line); 0 with pin 0: none
	pin                  uint8  // 1 = INTA, 0 = no interrupt
}

// pciFuncState is what the guest may change in one function's
// configuration space.
type pciFuncState struct {
	Command   uint16
	CacheLine uint8
	Latency   uint8
	IntLine   uint8
	// BARSizing is 1 after the guest wrote all ones to BAR0, until it writes
	// another value: BAR0 then reads back the size mask.
	BARSizing uint8
}

// pciSlot is what sits at one device number, as the guest found it when it
// enumerated the bus: a state restores only onto a bus with the same
// functions in the same places. Restore finds devices by their IDs, so
// without this two devices attached in the other order would restore their
// states behind each other's ports.
type pciSlot struct {
	Vendor, Device       uint16
	SubVendor, SubDevice uint16
	Class                uint32
	IOBase, IOSize       uint16
	IRQ, Pin             uint8
}

func (id *pciIdentity) slot() pciSlot {
	return pciSlot{
		Vendor: id.vendor, Device: id.device, SubVendor: id.subVendor, SubDevice: id.subDevice,
		Class: id.class, IOBase: id.ioBase, IOSize: id.ioSize, IRQ: id.irq, Pin: id.pin,
	}
}

// pciState is the PCI bus's plain-data state. Slots is set by add and is
// not the guest's to change: it is saved to be checked.
type pciState struct {
	Addr    uint32
	NrFuncs uint32
	Funcs   [pciMaxDevices]pciFuncState
	Slots   [pciMaxDevices]pciSlot
}

// PCIBus is PCI bus 0 behind configuration mechanism #1. mu protects st;
// funcs is fixed once the machine starts.
type PCIBus struct {
	funcs []pciIdentity

	mu sync.Mutex
	st pciState
}

// NewPCIBus makes a bus with its host bridge at device 0.
func NewPCIBus() *PCIBus {
	b := &PCIBus{}
	b.add(pciIdentity{vendor: pciVendorIntel, device: pciDeviceI440FX, class: pciClassHostBridge})
	return b
}

// add places a function at the next device number and returns that number.
// Precondition: the machine has not started.
func (b *PCIBus) add(id pciIdentity) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.funcs) >= pciMaxDevices {
		return 0, fmt.Errorf("PCI bus 0 is full (%d devices)", pciMaxDevices)
	}
	dev := len(b.funcs)
	b.funcs = append(b.funcs, id)
	b.st.NrFuncs = uint32(len(b.funcs))
	b.st.Funcs[dev] = pciFuncState{IntLine: id.irq}
	b.st.Slots[dev] = id.slot()
	if id.ioSize != 0 {
		b.st.Funcs[dev].Command = pciCommandIO // as firmware leaves it
	}
	return dev, nil
}

// selectedLocked returns the addressed device and register, or false if the
// address selects nothing (disabled, another bus, a missing device or
// function).
func (b *PCIBus) selectedLocked() (dev int, reg int, ok bool) {
	a := b.st.Addr
	bus, d, fn := (a>>16)&0xff, int((a>>11)&0x1f), (a>>8)&0x7
	if a&0x80000000 == 0 || bus != 0 || fn != 0 || d >= len(b.funcs) {
		return 0, 0, false
	}
	return d, int(a & 0xfc), true
}

// configLocked renders device dev's configuration space.
func (b *PCIBus) configLocked(dev int) [pciConfigSize]byte {
	var c [pciConfigSize]byte
	id, st := &b.funcs[dev], &b.st.Funcs[dev]
	le := binary.LittleEndian
	le.PutUint16(c[0x00:], id.vendor)
	le.PutUint16(c[0x02:], id.device)
	le.PutUint16(c[0x04:], st.Command)
	le.PutUint32(c[0x08:], id.class<<8) // revision 0: the legacy virtio ABI
	c[0x0c] = st.CacheLine
	c[0x0d] = st.Latency
	c[0x0e] = pciHeaderTypeNorm
	if id.ioSize != 0 {
		bar := uint32(id.ioBase) | pciBARIO
		if st.BARSizing != 0 {
			bar = ^(uint32(id.ioSize) - 1) | pciBARIO
		}
		le.PutUint32(c[0x10:], bar)
	}
	le.PutUint16(c[0x2c:], id.subVendor)
	le.PutUint16(c[0x2e:], id.subDevice)
	if id.pin != 0 {
		c[0x3c] = st.IntLine
		c[0x3d] = id.pin
	}
	return c
}

// PIORead implements PIODevice for ports 0xCF8-0xCFF.
func (b *PCIBus) PIORead(port uint16, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range data {
		data[i] = 0xff
	}
	switch {
	case port == PortPCIConfigAddr && len(data) == 4:
		binary.LittleEndian.PutUint32(data, b.st.Addr)
	case port >= PortPCIConfigData:
		dev, reg, ok := b.selectedLocked()
		if !ok {
			return
		}
		c := b.configLocked(dev)
		reg += int(port - PortPCIConfigData)
		copy(data, c[reg:min(reg+len(data), pciConfigSize)])
	}
}

// PIOWrite implements PIODevice for ports 0xCF8-0xCFF.
func (b *PCIBus) PIOWrite(port uint16, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case port == PortPCIConfigAddr && len(data) == 4:
		b.st.Addr = binary.LittleEndian.Uint32(data)
	case port >= PortPCIConfigData:
		dev, reg, ok := b.selectedLocked()
		if !ok {
			return
		}
		reg += int(port - PortPCIConfigData)
		st, id := &b.st.Funcs[dev], &b.funcs[dev]
		if reg == 0x10 && len(data) == 4 && id.ioSize != 0 {
			mask := ^(uint32(id.ioSize) - 1) &^ 3
			st.BARSizing = 0
			if binary.LittleEndian.Uint32(data)&mask == mask {
				st.BARSizing = 1
			}
			return
		}
		for i, v := range data {
			switch reg + i {
			case 0x04:
				st.Command = st.Command&0xff00 | uint16(v)&pciCommandMask
			case 0x05:
				st.Command = st.Command&0x00ff | uint16(v)<<8&pciCommandMask
			case 0x0c:
				st.CacheLine = v
			case 0x0d:
				st.Latency = v
			case 0x3c:
				if id.pin != 0 {
					st.IntLine = v
				}
			}
		}
	}
}

var _ Device = (*PCIBus)(nil)

// Quiesce implements Quiescer. Nothing to do: the bus changes only on a
// vCPU's configuration access.
func (b *PCIBus) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (b *PCIBus) Wake() {}

// ID implements Component.
func (b *PCIBus) ID() string { return "pci/0" }

// StateVersion implements Component. Version 2 added Slots.
func (b *PCIBus) StateVersion() uint32 { return 2 }

// SaveState implements Component.
func (b *PCIBus) SaveState() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return encodePlain(&b.st)
}

// RestoreState implements Component. The bus must hold the same devices in
// the same slots.
func (b *PCIBus) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(b.ID(), version, b.StateVersion()); err != nil {
		return err
	}
	var st pciState
	if err := decodePlain(data, &st); err != nil {
		return fmt.Errorf("%s: %w", b.ID(), err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if st.NrFuncs != uint32(len(b.funcs)) {
		return fmt.Errorf("%s: saved with %d devices, this bus has %d: %w", b.ID(), st.NrFuncs, len(b.funcs), ErrMismatch)
	}
	for i := range st.Slots {
		if saved, here := st.Slots[i], b.st.Slots[i]; saved != here {
			return fmt.Errorf("%s: device %d was %04x:%04x (subsystem %d) at I/O %#x, IRQ %d; this bus has %04x:%04x (subsystem %d) at I/O %#x, IRQ %d: %w",
				b.ID(), i, saved.Vendor, saved.Device, saved.SubDevice, saved.IOBase, saved.IRQ,
				here.Vendor, here.Device, here.SubDevice, here.IOBase, here.IRQ, ErrMismatch)
		}
	}
	for i := range st.Funcs {
		f := &st.Funcs[i]
		if f.Command&^pciCommandMask != 0 || f.BARSizing > 1 || (i >= len(b.funcs) && *f != (pciFuncState{})) {
			return fmt.Errorf("%s: device %d: invalid configuration state: %w", b.ID(), i, ErrMismatch)
		}
	}
	b.st = st
	return nil
}
