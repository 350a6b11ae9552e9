package vmm

import (
	"errors"
	"fmt"
)

// Quiescer is the pausing half of a Device. The machine quiesces every
// device before its vCPUs stop and wakes them after the vCPUs run again, so
// a paused machine's memory and devices do not change. There is no default:
// a device with nothing to quiesce says why in a method that does nothing.
type Quiescer interface {
	// Quiesce returns once the device will not touch guest memory, raise
	// interrupts or change its state on its own (other than through the
	// vCPUs' accesses, which stop next) until Wake.
	Quiesce()
	// Wake lets the device work again (and deliver what arrived meanwhile).
	Wake()
}

// Device is anything attached to a machine besides its VM and vCPUs: it
// can be paused (Quiescer) and saved (Component). A type that cannot do
// both cannot be attached.
type Device interface {
	Component
	Quiescer
}

// attach adds d to the machine's devices, after those already there, and
// gives it the I/O port ranges in ports. It refuses, changing nothing, a
// machine that has started, an ID another component of the machine has,
// and ports another device has.
func (m *Machine) attach(d Device, ports ...pioRange) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != stateCreated {
		return fmt.Errorf("attaching %s: machine is %v, need %v", d.ID(), m.state, stateCreated)
	}
	for _, c := range m.components() {
		if c.ID() == d.ID() {
			return fmt.Errorf("attaching %s: the machine already has a component with this ID", d.ID())
		}
	}
	if err := m.bus.register(ports...); err != nil {
		return fmt.Errorf("attaching %s: %w", d.ID(), err)
	}
	m.devices = append(m.devices, d)
	return nil
}

// components lists every part of the machine that has state, in restore
// order: the VM's interrupt controllers and clock first, then each vCPU
// (whose LAPIC sits on them), then the devices in attach order.
func (m *Machine) components() []Component {
	cs := make([]Component, 0, 1+len(m.vcpus)+len(m.devices))
	cs = append(cs, m.vm)
	for _, v := range m.vcpus {
		cs = append(cs, v)
	}
	for _, d := range m.devices {
		cs = append(cs, d)
	}
	return cs
}

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

// AttachVirtioNet adds a virtio-net device ("virtio-net/N") on PCI bus 0,
// creating the bus ("pci/0") on the first device, and attaches it to the
// machine with its ports. It returns the device's boot-info entry for
// LoadBareMetal. Start the backend with the returned device as its RxPort.
//
// Precondition: the machine is created and not started. Devices must be
// attached in the same order on the machine that saves and the one that
// restores: they take PCI slots, ports and IRQs in that order, and the
// bus's state refuses a restore onto other slots.
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
	Device
}

// attachVirtio places a virtio function on the PCI bus and wires it in.
// kind is the boot-info kind, subsystem the virtio device id.
func (m *Machine) attachVirtio(kind uint32, subsystem uint16, class uint32, mk func(id string, irq func(bool)) virtioDevice) (BootDevice, error) {
	if err := m.requireState(stateCreated); err != nil {
		return BootDevice{}, fmt.Errorf("attaching a virtio device: %w", err)
	}
	if m.pci == nil {
		bus := NewPCIBus()
		if err := m.attach(bus, pioRange{PortPCIConfigAddr, 8, bus}); err != nil {
			return BootDevice{}, err
		}
		m.pci = bus
	}
	bus := m.pci
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
	for _, d := range m.devices {
		switch d.(type) {
		case *VirtioNet:
			if kind == DeviceVirtioNet {
				n++
			}
		case *VirtioBlk:
			if kind == DeviceVirtioBlk {
				n++
			}
		}
	}
	dev := mk(fmt.Sprint(n), irqFn)
	if err := m.attach(dev, pioRange{base, VirtioIOSize, dev}); err != nil {
		return BootDevice{}, err
	}
	// It cannot fail: a free IRQ means a free slot.
	got, err := bus.add(pciIdentity{
		vendor: pciVendorVirtio, device: 0x1000 + subsystem - 1,
		subVendor: pciVendorVirtio, subDevice: subsystem,
		class: class, ioBase: base, ioSize: VirtioIOSize, irq: irq, pin: 1,
	})
	if err != nil {
		return BootDevice{}, err
	}
	return BootDevice{Kind: kind, IRQ: uint32(irq), IOBase: uint64(base), PCIBDF: uint32(got) << 3}, nil
}

// Devices is a guest's device list: every machine that runs a bundled
// guest attaches its devices through AttachDevices, in its one order
// (network, then disk), so that the machine that saves and the one that
// restores place them alike. A nil entry is a device the guest does not
// have.
type Devices struct {
	Net  *NetConfig
	Disk *BlkConfig
}

// Attached is what AttachDevices made: the boot-info entries for
// LoadBareMetal, in order, and each device (nil if not attached).
type Attached struct {
	Boot []BootDevice
	Net  *VirtioNet
	Disk *VirtioBlk
}

// AttachDevices attaches d's devices to m in the list's order.
// Precondition: the machine is created and not started.
func (m *Machine) AttachDevices(d Devices) (Attached, error) {
	var a Attached
	if d.Net != nil {
		bd, dev, err := m.AttachVirtioNet(*d.Net)
		if err != nil {
			return Attached{}, err
		}
		a.Boot, a.Net = append(a.Boot, bd), dev
	}
	if d.Disk != nil {
		bd, dev, err := m.AttachVirtioBlk(*d.Disk)
		if err != nil {
			return Attached{}, err
		}
		a.Boot, a.Disk = append(a.Boot, bd), dev
	}
	return a, nil
}
