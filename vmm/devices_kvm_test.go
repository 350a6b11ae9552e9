package vmm

import (
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// newDeviceMachine builds a machine for guest with devices attached by
// attach, which returns the boot devices.
func newDeviceMachine(t *testing.T, guest string, params map[string]string, attach func(m *Machine) []BootDevice) (*Machine, *vmmtest.Console) {
	t.Helper()
	vmmtest.RequireKVM(t)
	img, err := guests.Image(guest)
	if err != nil {
		t.Fatal(err)
	}
	con := &vmmtest.Console{}
	m, err := New(Config{VCPUs: 1, MemSize: 32 << 20, IRQChip: true, Params: params, Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.LoadBareMetal(img, attach(m)); err != nil {
		t.Fatal(err)
	}
	return m, con
}

// TestKVMDiskGuestOnVirtioBlk runs the disk guest (the C driver) against the
// device and a file image, then checks the image holds its records.
func TestKVMDiskGuestOnVirtioBlk(t *testing.T) {
	disk, err := CreateFileDisk(filepath.Join(t.TempDir(), "disk.img"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	m, con := newDeviceMachine(t, "disk", map[string]string{"records": "32"}, func(m *Machine) []BootDevice {
		bd, _, err := m.AttachVirtioBlk(BlkConfig{Disk: disk})
		if err != nil {
			t.Fatal(err)
		}
		if bd.IOBase != VirtioIOBase || bd.IRQ != 10 || bd.PCIBDF != 1<<3 {
			t.Fatalf("boot device %+v", bd)
		}
		return []BootDevice{bd}
	})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`disk: wrote 32 verified 32`))
	sector := make([]byte, sectorSize)
	if _, err := disk.ReadAt(sector, 31*sectorSize); err != nil || allZero(sector) {
		t.Fatalf("record 31 is not on the image: %v", err)
	}
}

// TestKVMDevicesWalkedInAttachOrder: whatever the device, the machine
// quiesces it on Pause and Close, wakes it on Resume, saves it and restores
// it — every device once, in attach order (saves run in parallel).
func TestKVMDevicesWalkedInAttachOrder(t *testing.T) {
	log := &callLog{}
	a := &logDevice{id: "test/a", log: log, state: []byte("A")}
	b := &logDevice{id: "test/b", log: log, state: []byte("B")}
	m, con := newDeviceMachine(t, "counter", map[string]string{"every": "1000"}, func(m *Machine) []BootDevice {
		for _, d := range []Device{a, b} {
			if err := m.attach(d); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`count 1\n`))
	log.take() // Start wakes them too
	step := func(what string, do func() error, want ...string) {
		t.Helper()
		if err := do(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := log.take()
		if what == "SaveState" {
			slices.Sort(got)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s called %q, want %q", what, got, want)
		}
	}
	var saved []byte
	step("Pause", m.Pause, "quiesce test/a", "quiesce test/b")
	step("SaveState", func() (err error) { saved, err = m.SaveState(); return err }, "save test/a", "save test/b")
	a.state, b.state = []byte("a2"), []byte("b2")
	step("RestoreState", func() error { return m.RestoreState(saved) }, "restore test/a A", "restore test/b B")
	step("Resume", m.Resume, "wake test/a", "wake test/b")
	step("Close", m.Close, "quiesce test/a", "quiesce test/b")
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

// TestKVMKvGuestOverUDPFront runs the kv guest behind the UDP front and talks
// to it with a UDP client.
func TestKVMKvGuestOverUDPFront(t *testing.T) {
	front, err := NewUDPFront(UDPFrontConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	var dev *VirtioNet
	m, con := newDeviceMachine(t, "kv", nil, func(m *Machine) []BootDevice {
		var bd BootDevice
		var err error
		if bd, dev, err = m.AttachVirtioNet(NetConfig{Sink: front}); err != nil {
			t.Fatal(err)
		}
		return []BootDevice{bd}
	})
	if err := front.Start(dev); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`kv: start`))
	c, err := net.DialUDP("udp4", nil, front.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256)
	for _, rt := range []struct{ req, want string }{
		{"SET a 1", "1 OK"}, {"INCR a", "2 VALUE 2"}, {"GET a", "3 VALUE 2"},
	} {
		c.Write([]byte(rt.req))
		c.SetReadDeadline(time.Now().Add(time.Minute))
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != rt.want {
			t.Fatalf("%s: got %q, %v (want %q)\n%s", rt.req, buf[:n], err, rt.want, con.String())
		}
	}
}
