package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmmachine"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
)

// runner is a checkpoint-mode machine with its devices: the machine.Runner
// the engine drives, and what the node needs of it besides.
type runner struct {
	machine.Runner
	// rx is where the network backend delivers received frames (nil
	// without a network device).
	rx vmm.RxPort
	// pollDisk tells the disk device that a held-back FLUSH may complete
	// (nil without a disk).
	pollDisk func()
	// wait returns when the guest stops (nil if it powered off).
	wait  func() error
	close func()
}

// waitOrCancel waits until the guest stops or ctx ends (then ctx.Err();
// close stops the guest).
func (r *runner) waitOrCancel(ctx context.Context) error {
	select {
	case <-r.Stopped():
		return r.wait()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newRunner builds o's machine for checkpoint mode, its network device
// sending to net (nil: no network) and its disk device on disk (nil: no
// disk). A machine that tracks dirty pages (a primary's) can be
// checkpointed; one that does not (a backup's) only receives.
//
// The runner's machine is held by the node's operator (ftckpt ctl pause)
// through a hold between it and the engine.
func newRunner(o *Options, net vmm.FrameSink, disk vmm.Disk, track bool) (*runner, error) {
	var r *runner
	var err error
	if o.Machine == MachineSim {
		r, err = newSimRunner(o, net, disk)
	} else {
		r, err = newKVMRunner(o, net, disk, track)
	}
	if err != nil {
		return nil, err
	}
	r.Runner = o.ops.wrapRunner(r.Runner)
	return r, nil
}

func newKVMRunner(o *Options, net vmm.FrameSink, disk vmm.Disk, track bool) (*runner, error) {
	img, err := guests.Image(o.Guest)
	if err != nil {
		return nil, err
	}
	cfg := o.kvmConfig()
	if track {
		host, err := dirtylog.ProbeHost()
		if err != nil {
			return nil, err
		}
		if cfg.DirtyRingEntries, err = dirtylog.RingEntriesFor(o.Tracking, cfg.MemSize, host); err != nil {
			return nil, err
		}
	}
	m, err := vmm.New(cfg)
	if err != nil {
		return nil, err
	}
	r := &runner{close: func() { m.Close() }}
	built := false
	defer func() {
		if !built {
			r.close()
		}
	}()
	var devs vmm.Devices
	if net != nil {
		devs.Net = &vmm.NetConfig{Sink: net}
	}
	if disk != nil {
		devs.Disk = &vmm.BlkConfig{Disk: disk}
	}
	att, err := m.AttachDevices(devs)
	if err != nil {
		return nil, err
	}
	if att.Net != nil {
		r.rx = att.Net
	}
	if att.Disk != nil {
		r.pollDisk = att.Disk.Poll
	}
	if err := m.LoadBareMetal(img, att.Boot); err != nil {
		return nil, err
	}
	g := &kvmmachine.Runner{M: m}
	if track {
		if g.Tracker, err = dirtylog.New(m, o.Tracking); err != nil {
			return nil, err
		}
		// The machine stops first: a ring-full exit reads the rings.
		r.close = func() { m.Close(); g.Tracker.Close() }
	}
	r.Runner = g
	r.wait = func() error { _, err := m.Wait(); return err }
	built = true
	return r, nil
}

func newSimRunner(o *Options, net vmm.FrameSink, disk vmm.Disk) (*runner, error) {
	params, err := sim.ParseParams(o.Params)
	if err != nil {
		return nil, err
	}
	g, err := sim.NewCheckpointGuest(o.Guest, int(o.Memory/sim.PageSize), simDevices{net: net, disk: disk, console: o.Console}, params...)
	if err != nil {
		return nil, err
	}
	r := &runner{Runner: g, close: g.Close, wait: g.Err}
	if net != nil {
		r.rx = simPort{g}
	}
	if disk != nil {
		r.pollDisk = g.Poke
	}
	return r, nil
}

// simPort is a software machine's network device, as a backend's receiver.
type simPort struct{ g *sim.CheckpointGuest }

func (p simPort) Receive(f []byte) bool { return p.g.Receive(f) }
func (p simPort) Poll()                 {} // Receive brings the vCPU round itself

// simDevices are the software machine's devices in checkpoint mode: frames
// to net, the disk (nil: none) and the console.
type simDevices struct {
	net     vmm.FrameSink
	disk    vmm.Disk
	console io.Writer
}

func (d simDevices) SendFrame(f []byte) error {
	if d.net == nil {
		return nil // no network: nothing leaves
	}
	return d.net.SendFrame(f)
}

func (d simDevices) ReadDisk(p []byte, off int64) error {
	if d.disk == nil {
		return errors.New("no disk")
	}
	_, err := d.disk.ReadAt(p, off)
	return err
}

func (d simDevices) WriteDisk(p []byte, off int64) error {
	if d.disk == nil {
		return errors.New("no disk")
	}
	_, err := d.disk.WriteAt(p, off)
	return err
}

func (d simDevices) FlushDisk() error {
	if d.disk == nil {
		return nil
	}
	return d.disk.Flush()
}

func (d simDevices) Console(p []byte) {
	if d.console != nil {
		d.console.Write(p)
	}
}

// openDisk opens o's disk image, creating it at DiskSize if missing
// (atomically: both hosts may start at once); nil without a disk. A
// mirrored disk's image is this node's alone: it is locked, waiting a
// while for a process that is ending to let go.
func openDisk(o *Options) (*vmm.FileDisk, error) {
	if o.Disk == "" {
		return nil, nil
	}
	d, err := vmm.OpenOrCreateFileDisk(o.Disk, o.DiskSize)
	if err != nil {
		return nil, fmt.Errorf("--disk %s: %w", o.Disk, err)
	}
	if o.DiskMode == DiskMirrored {
		if err := d.Lock(imageLockWait); err != nil {
			d.Close()
			return nil, fmt.Errorf("--disk %s (--disk-mode mirrored: an image per host): %w", o.Disk, err)
		}
	}
	return d, nil
}

// imageLockWait is how long a node waits for a mirrored disk's image that
// another process holds.
const imageLockWait = 10 * time.Second
