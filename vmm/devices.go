package vmm

import (
	"errors"
	"fmt"
)

// Where virtio devices go: PCI device d (1, 2, …) has its I/O BAR at
// VirtioIOBase + VirtioIOSize*(d-1) and the d-th legacy IRQ of
// virtioIRQs. Each device gets its own line (a level-triggered line shared
// by two devices would need the lines OR-ed).
const VirtioIOBase = 0xc000

var virtioIRQs = [...]uint8{10, 11, 5, 9}

// NetConfig configures a virtio-net device.
type NetConfig struct {
	// MAC is the guest's address; zero means DefaultGuestMAC.
	MAC [6]byte
	// Sink receives every frame the guest transmits (required): a backend,
	// or the output buffer wrapping one.
	Sink FrameSink
	// RxBacklog bounds the host queue of received frames waiting for guest
	// buffers; 0 means 256.
	RxBacklog int
}

// BlkConfig configures a virtio-blk device.
type BlkConfig struct {
	// Disk is the backing store (required): a FileDisk, or the output
	// buffer wrapping one.
	Disk Disk
	// ReadOnly offers VIRTIO_BLK_F_RO and fails writes.
	ReadOnly bool
	// Serial is what GET_ID returns (at most 20 bytes).
	Serial string
}

// AttachVirtioNet adds a virtio-net device on PCI bus 0 (creating the bus on
// the first device) and registers its ports, its state ("virtio-net/N") and
// its quiescer. It returns the device's boot-info entry for LoadBareMetal.
// Start the backend with the returned device as its RxPort.
//
// Precondition: the machine is created and not started. Devices must be
// attached in the same order on the machine that saves and the one that
// restores.
func (m *Machine) AttachVirtioNet(cfg NetConfig) (BootDevice, *VirtioNet, error) {
	if cfg.Sink == nil {
		return BootDevice{}, nil, errors.New("virtio-net: no frame sink")
	}
	if cfg.MAC == ([6]byte{}) {
		cfg.MAC = DefaultGuestMAC
	}
	if cfg.MAC[0]&1 != 0 {
		return BootDevice{}, nil, fmt.Errorf("virtio-net: MAC %x is a multicast address", cfg.MAC)
	}
	if cfg.RxBacklog <= 0 {
		cfg.RxBacklog = 256
	}
	var dev *VirtioNet
	bd, err := m.attachVirtio(DeviceVirtioNet, 1, pciClassEthernet, func(id string, irq func(bool)) virtioDevice {
		dev = NewVirtioNet(id, m.mem, cfg.MAC, cfg.Sink, irq, cfg.RxBacklog)
		return dev
	})
	if err != nil {
		return BootDevice{}, nil, err
	}
	return bd, dev, nil
}

// AttachVirtioBlk adds a virtio-blk device on PCI bus 0, like
// AttachVirtioNet (state "virtio-blk/N").
func (m *Machine) AttachVirtioBlk(cfg BlkConfig) (BootDevice, *VirtioBlk, error) {
	if cfg.Disk == nil {
		return BootDevice{}, nil, errors.New("virtio-blk: no disk")
	}
	if s := cfg.Disk.Size(); s <= 0 || s%sectorSize != 0 {
		return BootDevice{}, nil, fmt.Errorf("virtio-blk: disk of %d bytes is not a positive multiple of %d", s, sectorSize)
	}
	var dev *VirtioBlk
	bd, err := m.attachVirtio(DeviceVirtioBlk, 2, pciClassStorage, func(id string, irq func(bool)) virtioDevice {
		dev = NewVirtioBlk(id, m.mem, cfg.Disk, cfg.ReadOnly, cfg.Serial, irq)
		return dev
	})
	if err != nil {
		return BootDevice{}, nil, err
	}
	return bd, dev, nil
}

// virtioDevice is what attachVirtio wires into the machine.
type virtioDevice interface {
	PIODevice
	Component
	Quiescer
}

// attachVirtio places a virtio function on the PCI bus and wires it in.
// kind is the boot-info kind, subsystem the virtio device id.
func (m *Machine) attachVirtio(kind uint32, subsystem uint16, class uint32, mk func(id string, irq func(bool)) virtioDevice) (BootDevice, error) {
	if err := m.requireState(stateCreated); err != nil {
		return BootDevice{}, fmt.Errorf("attaching a virtio device: %w", err)
	}
	bus := m.pciBus()
	if bus == nil {
		bus = NewPCIBus()
		if err := m.bus.RegisterPIO(PortPCIConfigAddr, 8, bus); err != nil {
			return BootDevice{}, fmt.Errorf("registering the PCI host bridge: %w", err)
		}
		m.AddComponent(bus)
	}
	slot := len(bus.funcs) // the device number add will assign
	if slot-1 >= len(virtioIRQs) {
		return BootDevice{}, fmt.Errorf("no free legacy IRQ for a %d-th virtio device (at most %d)", slot, len(virtioIRQs))
	}
	irq := virtioIRQs[slot-1]
	base := uint16(VirtioIOBase + VirtioIOSize*(slot-1))
	irqFn := func(level bool) { m.SetIRQLine(uint32(irq), level) }
	if !m.cfg.IRQChip {
		irqFn = func(level bool) { m.pic.SetIRQ(int(irq), level) }
	}
	// Instance numbers count devices of the same kind: virtio-net/0, /1, …
	n := 0
	for _, c := range m.components {
		if _, ok := c.(*VirtioNet); ok && kind == DeviceVirtioNet {
			n++
		} else if _, ok := c.(*VirtioBlk); ok && kind == DeviceVirtioBlk {
			n++
		}
	}
	dev := mk(fmt.Sprint(n), irqFn)
	if err := m.bus.RegisterPIO(base, VirtioIOSize, dev); err != nil {
		return BootDevice{}, fmt.Errorf("registering %s: %w", dev.ID(), err)
	}
	got, err := bus.add(pciIdentity{
		vendor: pciVendorVirtio, device: 0x1000 + subsystem - 1,
		subVendor: pciVendorVirtio, subDevice: subsystem,
		class: class, ioBase: base, ioSize: VirtioIOSize, irq: irq, pin: 1,
	})
	if err != nil {
		return BootDevice{}, err
	}
	m.AddComponent(dev)
	m.AddQuiescer(dev)
	return BootDevice{Kind: kind, IRQ: uint32(irq), IOBase: uint64(base), PCIBDF: uint32(got) << 3}, nil
}

// pciBus returns the machine's PCI bus, or nil before the first device.
func (m *Machine) pciBus() *PCIBus {
	for _, c := range m.components {
		if b, ok := c.(*PCIBus); ok {
			return b
		}
	}
	return nil
}
