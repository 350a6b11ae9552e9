package kvmmachine_test

import (
	"testing"

	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmmachine"
	"github.com/ftckpt/ftckpt/vmm/machine/machinetest"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// kvmRunnerCase is a Runner the contract runs on.
type kvmRunnerCase struct {
	name   string
	guest  string
	params map[string]string
	vcpus  int
	net    bool
	track  dirtylog.Mode
}

// openRunner builds c's machine as ftckpt does for checkpoint mode (the
// in-kernel irqchip, virtio-net if c.net, its dirty tracker), not started,
// with mem bytes of RAM.
func openRunner(t *testing.T, c kvmRunnerCase, mem int64) machinetest.Runner {
	t.Helper()
	img, err := guests.Image(c.guest)
	if err != nil {
		t.Fatal(err)
	}
	host, err := dirtylog.ProbeHost()
	if err != nil {
		t.Fatal(err)
	}
	cfg := vmm.Config{VCPUs: c.vcpus, MemSize: mem, IRQChip: true, Params: c.params, Console: &vmmtest.Console{}}
	if cfg.DirtyRingEntries, err = dirtylog.RingEntriesFor(c.track, mem, host); err != nil {
		t.Fatal(err)
	}
	m, err := vmm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	var r machinetest.Runner
	var boot []vmm.BootDevice
	if c.net {
		bd, dev, err := m.AttachVirtioNet(vmm.NetConfig{Sink: discard{}})
		if err != nil {
			t.Fatal(err)
		}
		boot = append(boot, bd)
		r.Receive = func(f []byte) {
			dev.Receive(f)
			dev.Poll()
		}
	}
	if err := m.LoadBareMetal(img, boot); err != nil {
		t.Fatal(err)
	}
	g := &kvmmachine.Runner{M: m}
	if g.Tracker, err = dirtylog.New(m, c.track); err != nil {
		t.Fatal(err)
	}
	// The tracker closes after the machine (t.Cleanup runs last first): a
	// ring-full exit reads the rings.
	t.Cleanup(func() { m.Close(); g.Tracker.Close() })
	r.Runner = g
	return r
}

// discard is a network that loses what the guest sends.
type discard struct{}

func (discard) SendFrame([]byte) error { return nil }

// TestKVMRunnerContract runs machinetest's Runner contract on Runner:
// a network server and a multi-vCPU guest, with the dirty bitmap and with
// dirty rings.
func TestKVMRunnerContract(t *testing.T) {
	vmmtest.RequireKVM(t)
	const mem = 32 << 20
	for _, c := range []kvmRunnerCase{
		{name: "kv/bitmap", guest: "kv", vcpus: 1, net: true, track: dirtylog.ModeBitmap},
		{name: "kv/ring", guest: "kv", vcpus: 1, net: true, track: dirtylog.ModeRing},
		{name: "smp/bitmap", guest: "smp", vcpus: 2, track: dirtylog.ModeBitmap},
		{name: "smp/ring", guest: "smp", vcpus: 2, track: dirtylog.ModeRing},
		// memtouch rewrites its 64 pages over and over, flat out: the pages
		// a round snapshots are written again at once (CopyOnWrite).
		{name: "memtouch/bitmap", guest: "memtouch", vcpus: 1, track: dirtylog.ModeBitmap,
			params: map[string]string{"ws": "64", "dirty": "64", "every": "1000000000"}},
		// 1,536 pages (6 MiB): a round's dirty pages cover whole huge
		// pages of guest memory, which copy-on-write protects as one
		// entry each and unprotects whole (vmm/cow's pieces).
		{name: "memtouch/bitmap/huge-pages", guest: "memtouch", vcpus: 1, track: dirtylog.ModeBitmap,
			params: map[string]string{"ws": "1536", "dirty": "1536", "every": "1000000000"}},
		// Two vCPUs writing at once, each into its own dirty ring.
		{name: "memtouch/ring/2-writers", guest: "memtouch", vcpus: 2, track: dirtylog.ModeRing,
			params: map[string]string{"ws": "64", "dirty": "64", "every": "1000000000", "writers": "2"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			machinetest.RunRunner(t, machinetest.RunnerSuite{
				Open: func(t *testing.T) machinetest.Runner { return openRunner(t, c, mem) },
				Foreign: func(t *testing.T) map[string][]byte {
					other := c
					other.vcpus++
					g, err := sim.NewCheckpointGuest("kv", 64, simDevices{})
					if err != nil {
						t.Fatal(err)
					}
					defer g.Close()
					return map[string][]byte{
						"the state of a machine with more RAM":    kvmState(t, openRunner(t, c, 2*mem)),
						"the state of a machine with a vCPU more": kvmState(t, openRunner(t, other, mem)),
						"a software machine's state":              kvmState(t, g),
					}
				},
				StateDiff: vmm.StateDiff,
			})
		})
	}
}

func kvmState(t *testing.T, m interface{ SaveState() ([]byte, error) }) []byte {
	t.Helper()
	s, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// simDevices are devices that lose what the software machine emits.
type simDevices struct{}

func (simDevices) ReadDisk(p []byte, _ int64) error { clear(p); return nil }
func (simDevices) WriteDisk([]byte, int64) error    { return nil }
func (simDevices) SendFrame([]byte) error           { return nil }
func (simDevices) Console([]byte)                   {}
