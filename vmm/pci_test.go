package vmm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func pciRead(b *PCIBus, dev, reg, size int) uint32 {
	b.PIOWrite(PortPCIConfigAddr, le32(0x80000000|uint32(dev)<<11|uint32(reg&^3)))
	d := make([]byte, size)
	b.PIORead(PortPCIConfigData+uint16(reg&3), d)
	var v uint32
	for i := size - 1; i >= 0; i-- {
		v = v<<8 | uint32(d[i])
	}
	return v
}

func pciWrite(b *PCIBus, dev, reg int, v uint32) {
	b.PIOWrite(PortPCIConfigAddr, le32(0x80000000|uint32(dev)<<11|uint32(reg)))
	b.PIOWrite(PortPCIConfigData, le32(v))
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

func newTestPCI(t *testing.T) *PCIBus {
	b := NewPCIBus()
	if _, err := b.add(pciIdentity{vendor: pciVendorVirtio, device: 0x1000, subVendor: pciVendorVirtio, subDevice: 1,
		class: pciClassEthernet, ioBase: 0xc000, ioSize: VirtioIOSize, irq: 10, pin: 1}); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPCIConfigSpace(t *testing.T) {
	b := newTestPCI(t)
	// Linux's pci_check_type1: the address register reads back.
	b.PIOWrite(PortPCIConfigAddr, le32(0x80000000))
	got := make([]byte, 4)
	b.PIORead(PortPCIConfigAddr, got)
	if !bytes.Equal(got, le32(0x80000000)) {
		t.Fatalf("config address reads % x", got)
	}
	for _, c := range []struct {
		name           string
		dev, reg, size int
		want           uint32
	}{
		{"bridge vendor/device", 0, 0, 4, 0x1237<<16 | 0x8086},
		{"bridge class", 0, 0x08, 4, 0x06000000},
		{"virtio vendor", 1, 0, 2, 0x1af4},
		{"virtio device", 1, 2, 2, 0x1000},
		{"virtio class, revision 0", 1, 0x08, 4, 0x02000000},
		{"subsystem", 1, 0x2c, 4, 1<<16 | 0x1af4},
		{"BAR0", 1, 0x10, 4, 0xc001},
		{"BAR1", 1, 0x14, 4, 0},
		{"command: I/O on", 1, 0x04, 2, 1},
		{"interrupt line", 1, 0x3c, 1, 10},
		{"interrupt pin", 1, 0x3d, 1, 1},
		{"bridge has no pin", 0, 0x3d, 1, 0},
		{"absent device", 2, 0, 4, 0xffffffff},
		{"absent device 31", 31, 0, 2, 0xffff},
	} {
		if got := pciRead(b, c.dev, c.reg, c.size); got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, got, c.want)
		}
	}
	// Function 1 and bus 1 are absent; a disabled address reads all ones.
	b.PIOWrite(PortPCIConfigAddr, le32(0x80000000|1<<11|1<<8))
	d := make([]byte, 4)
	b.PIORead(PortPCIConfigData, d)
	if !bytes.Equal(d, le32(0xffffffff)) {
		t.Errorf("function 1 reads % x", d)
	}
	b.PIOWrite(PortPCIConfigAddr, le32(1<<11))
	b.PIORead(PortPCIConfigData, d)
	if !bytes.Equal(d, le32(0xffffffff)) {
		t.Errorf("disabled address reads % x", d)
	}
}

func TestPCIBARSizingAndWrites(t *testing.T) {
	b := newTestPCI(t)
	pciWrite(b, 1, 0x10, 0xffffffff)
	if got := pciRead(b, 1, 0x10, 4); got != 0xffffff01 {
		t.Fatalf("sizing read %#x, want 0xffffff01", got)
	}
	pciWrite(b, 1, 0x10, 0xc000)
	if got := pciRead(b, 1, 0x10, 4); got != 0xc001 {
		t.Fatalf("after sizing %#x", got)
	}
	pciWrite(b, 1, 0x10, 0xd000) // relocation is not supported: stays put
	if got := pciRead(b, 1, 0x10, 4); got != 0xc001 {
		t.Fatalf("after a move %#x", got)
	}
	pciWrite(b, 1, 0x04, 0xffff0007)
	if got := pciRead(b, 1, 0x04, 4); got != 0x0007 {
		t.Fatalf("command/status %#x (status is read-only zero)", got)
	}
	pciWrite(b, 1, 0x3c, 0x0b)
	if got := pciRead(b, 1, 0x3c, 2); got != 0x010b {
		t.Fatalf("interrupt line/pin %#x", got)
	}
	pciWrite(b, 1, 0x00, 0) // vendor is read-only
	if pciRead(b, 1, 0, 2) != 0x1af4 {
		t.Fatal("vendor id changed")
	}
}

func TestPCIStateRoundTrip(t *testing.T) {
	b := newTestPCI(t)
	pciWrite(b, 1, 0x10, 0xffffffff)
	saved := mustSave(t, b)
	b2 := newTestPCI(t)
	v := b.StateVersion()
	if err := b2.RestoreState(v, saved); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(saved, mustSave(t, b2)) || pciRead(b2, 1, 0x10, 4) != 0xffffff01 {
		t.Fatal("restored bus differs")
	}
	if err := NewPCIBus().RestoreState(v, saved); !errors.Is(err, ErrMismatch) {
		t.Fatalf("bus with another device count: %v", err)
	}
	if err := b2.RestoreState(v+1, saved); !errors.Is(err, ErrVersion) {
		t.Fatalf("version %d: %v", v+1, err)
	}
	if err := b2.RestoreState(1, saved); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 1 (before slots were saved): %v", err)
	}
	if err := b2.RestoreState(v, saved[1:]); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
}

// TestPCIStateNamesItsSlots: a bus whose devices sit in other slots (attached
// in another order) refuses the state, and stays as it was.
func TestPCIStateNamesItsSlots(t *testing.T) {
	net := pciIdentity{vendor: pciVendorVirtio, device: 0x1000, subVendor: pciVendorVirtio, subDevice: 1,
		class: pciClassEthernet, ioBase: 0xc000, ioSize: VirtioIOSize, irq: 10, pin: 1}
	blk := pciIdentity{vendor: pciVendorVirtio, device: 0x1001, subVendor: pciVendorVirtio, subDevice: 2,
		class: pciClassStorage, ioBase: 0xc100, ioSize: VirtioIOSize, irq: 11, pin: 1}
	bus := func(ids ...pciIdentity) *PCIBus {
		b := NewPCIBus()
		for _, id := range ids {
			if _, err := b.add(id); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	saved := mustSave(t, bus(net, blk))
	// The same devices the other way round: each at the other's port and IRQ.
	netAt, blkAt := net, blk
	netAt.ioBase, netAt.irq, blkAt.ioBase, blkAt.irq = blk.ioBase, blk.irq, net.ioBase, net.irq
	swapped := bus(blkAt, netAt)
	before := mustSave(t, swapped)
	err := swapped.RestoreState(swapped.StateVersion(), saved)
	if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), "device 1 was 1af4:1000") {
		t.Fatalf("devices in other slots: %v, want ErrMismatch naming device 1", err)
	}
	if !bytes.Equal(before, mustSave(t, swapped)) {
		t.Error("a refused state changed the bus")
	}
	if err := bus(net, blk).RestoreState(swapped.StateVersion(), saved); err != nil {
		t.Fatalf("the same slots: %v", err)
	}
}
