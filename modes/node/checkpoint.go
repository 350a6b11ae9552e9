package node

import (
	"context"
	"fmt"
	"net"
	"time"

	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
)

// Checkpoint mode's two roles.

// runCheckpointPrimary wins the next generation, builds the machine with
// its outputs held, connects to the backup, starts the guest and replicates
// it; having lost its backup and won the generation after, it runs on alone
// until the guest stops or ctx ends.
func (n *Node) runCheckpointPrimary(ctx context.Context) error {
	o := &n.o
	log := o.log()
	arb, fence, gen, err := becomePrimary(ctx, o)
	if err != nil {
		return err
	}
	defer arb.Close()
	h, err := openHost(o, true)
	if err != nil {
		return err
	}
	defer h.close()

	var primary *ckmode.Primary
	pos := func() uint64 { return primary.Position() }
	out, held, err := checkpointOutputs(gen, fence, h.netSink(), h, pos)
	if err != nil {
		return err
	}
	var netDev vmm.FrameSink
	var diskDev vmm.Disk
	if held != nil {
		diskDev = held
	}
	if o.hasNetDevice() {
		netDev = ckmode.HeldNet{Out: out, Pos: pos}
	}
	r, err := newRunner(o, netDev, diskDev, true)
	if err != nil {
		return err
	}
	// Before the backends close: no device may use them after. Kept
	// open, paused, the machine uses none.
	defer n.keepOrClose(r.Memory(), r.close)
	if held != nil {
		held.SetPoll(r.pollDisk) // a held-back FLUSH completes
	}
	cfg := o.Checkpoint
	cfg.Machine = o.describe(h.diskSize())
	// The machine itself, not the runner around it: the primary looks for
	// what it can do besides machine.Runner (machine.PauseSaver).
	if primary, err = ckmode.NewPrimary(cfg, r.Runner, out, fence, gen, log); err != nil {
		return err
	}
	n.set(func(p *Parts) { p.Machine, p.Outputs, p.CheckpointPrimary = r.Runner, out, primary })
	if held != nil {
		o.setPrimaryDisk(primary, held)
	}
	var conn net.Conn // nil: alone until a backup joins (AcceptBackups)
	if o.Peer != "" {
		if conn, err = dialPeer(ctx, o, o.Peer, 10*time.Second); err != nil {
			return err
		}
	}
	if err := r.Start(); err != nil {
		return err
	}
	if h.backend != nil {
		if err := h.backend.Start(r.rx); err != nil {
			return err
		}
	}
	log.Info("primary running", "generation", gen, "backup", o.Peer, "epoch", describeEpoch(&cfg), "machine", cfg.Machine, "pid", pid)
	return n.protectCheckpoint(ctx, primary, r, out, conn)
}

// setPrimaryDisk gives a checkpoint primary its held disk, mirrored to the
// backup's own image if the disk mode says so.
func (o *Options) setPrimaryDisk(p *ckmode.Primary, held *ckmode.HeldDisk) {
	p.SetDisk(held)
	if o.DiskMode == DiskMirrored {
		p.MirrorDisk()
	}
}

// setBackupDisk gives a checkpoint backup its disk: the shared image, where
// going live writes again what the primary may not have made durable, or
// its own image, which the checkpoints keep equal to the primary's.
func (o *Options) setBackupDisk(b *ckmode.Backup, disk vmm.Disk) error {
	if o.DiskMode == DiskMirrored {
		return b.MirrorDisk(disk)
	}
	b.SetDisk(disk)
	return nil
}

// describeEpoch is the epoch setting as the user gave it.
func describeEpoch(c *ckmode.Config) string {
	if c.EpochAuto {
		return fmt.Sprintf("auto (%v to %v)", c.MinEpoch, c.MaxEpoch)
	}
	return c.Epoch.String()
}

// runCheckpointBackup builds the machine (not started; its network reaches
// the world only once live), follows primaries (ckmode.Backup.Serve) and,
// live, opens the backends and runs the guest until it stops or ctx ends.
func (n *Node) runCheckpointBackup(ctx context.Context) error {
	o := &n.o
	log := o.log()
	arb, fence, err := openFence(o, RoleBackup)
	if err != nil {
		return err
	}
	defer arb.Close()
	h, err := openHost(o, false)
	if err != nil {
		return err
	}
	defer h.close()
	var netDev vmm.FrameSink
	deferred := &deferredNet{}
	if o.hasNetDevice() {
		netDev = deferred
	}
	diskDev := h.diskDev()
	// A backup that takes backups once live is built as a primary is
	// (its dirty pages tracked), its devices turned to a primary's when
	// it goes live.
	var late *liveDevices
	if o.AcceptBackups != "" {
		late = &liveDevices{}
		late.net.set(deferred)
		if netDev != nil {
			netDev = &late.net
		}
		if diskDev != nil {
			late.disk.set(diskDev)
			diskDev = &late.disk
		}
	}
	r, err := newRunner(o, netDev, diskDev, late != nil)
	if err != nil {
		return err
	}
	defer n.keepOrClose(r.Memory(), r.close) // live, it may hand its guest over
	cfg := o.Checkpoint
	cfg.Machine = o.describe(h.diskSize())
	seeded := o.seedMemory(r.Memory()) // before the backup owns the memory
	// The hold itself, not the runner around it: going live, the backup
	// holds the guest for the operator (machine.KeepHeld).
	backup, err := ckmode.NewBackup(cfg, r.Runner, fence, log)
	if err != nil {
		return err
	}
	if seeded {
		backup.HoldsMemory()
		log.Info("this host's memory holds the guest as it handed it over: the new primary sends only what changed since")
	}
	n.set(func(p *Parts) { p.Machine, p.CheckpointBackup = r.Runner, backup })
	if h.disk != nil {
		if err := o.setBackupDisk(backup, h.disk); err != nil {
			return err
		}
	}
	var primary *ckmode.Primary
	var out *outbuf.Buffer
	// Going live, the guest's network is opened before the guest starts:
	// a frame it sent in between (its reply to a request whose disk flush
	// the old primary released) would be lost.
	backup.SetLive(func(gen uint64) (err error) {
		if err := h.goLive(ctx); err != nil {
			return err
		}
		if h.backend != nil {
			deferred.set(h.backend)
		}
		if late != nil {
			primary, out, err = late.becomePrimary(o, gen, fence, h, r, deferred)
		}
		return err
	})
	var gen uint64
	if o.Join != "" {
		gen, err = backup.Follow(ctx, joinDialer(o))
	} else {
		var ln net.Listener
		if ln, err = listen(ctx, o); err != nil {
			return err
		}
		gen, err = backup.Serve(ctx, ln)
		ln.Close()
	}
	if err != nil {
		return err
	}
	n.ops.live.Store(true)
	if h.backend != nil {
		if err := h.backend.Start(r.rx); err != nil {
			return err
		}
	}
	if primary == nil {
		log.Warn("live as primary, unprotected", "generation", gen, "pid", pid)
		return r.waitOrCancel(ctx)
	}
	n.set(func(p *Parts) { p.Outputs, p.CheckpointPrimary = out, primary })
	log.Warn("live as primary, unprotected until a backup joins", "generation", gen, "pid", pid)
	return n.protectCheckpoint(ctx, primary, r, out, nil)
}
