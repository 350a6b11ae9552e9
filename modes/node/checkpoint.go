package node

import (
	"context"
	"errors"
	"fmt"
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
	arb, fence, gen, err := becomePrimary(ctx, o.Arbiter)
	if err != nil {
		return err
	}
	defer arb.Close()
	backend, err := openBackend(o)
	if err != nil {
		return err
	}
	if backend != nil {
		defer backend.Close()
	}
	disk, err := openDisk(o)
	if err != nil {
		return err
	}
	if disk != nil {
		defer disk.Close()
	}

	var primary *ckmode.Primary
	pos := func() uint64 { return primary.Position() }
	env := outbuf.Env{Generation: gen, Fence: fence, Net: unplugged{}, Clock: outbuf.SystemClock{}}
	var netDev vmm.FrameSink
	if backend != nil {
		env.Net = backend
	}
	var held *ckmode.HeldDisk
	var diskDev vmm.Disk
	diskSize := int64(0)
	if disk != nil {
		held = ckmode.NewHeldDisk(disk, pos)
		env.Disk, diskDev, diskSize = held.Sink(), held, disk.Size()
	}
	out, err := outbuf.New(outbuf.DefaultConfig(), env)
	if err != nil {
		return err
	}
	if o.hasNetDevice() {
		netDev = ckmode.HeldNet{Out: out, Pos: pos}
	}
	r, err := newRunner(o, netDev, diskDev, true)
	if err != nil {
		return err
	}
	defer r.close() // before the backends close: no device may use them after
	if held != nil {
		held.Attach(out)
		held.SetPoll(r.pollDisk) // a held-back FLUSH completes
	}
	cfg := o.Checkpoint
	cfg.Machine = o.describe(diskSize)
	if primary, err = ckmode.NewPrimary(cfg, r, out, fence, gen, log); err != nil {
		return err
	}
	n.set(func(p *Parts) { p.Machine, p.Outputs, p.CheckpointPrimary = r.Runner, out, primary })
	if held != nil {
		primary.SetDisk(held)
	}
	conn, err := dialPeer(ctx, o.Peer, 10*time.Second)
	if err != nil {
		return err
	}
	if err := r.Start(); err != nil {
		return err
	}
	if backend != nil {
		if err := backend.Start(r.rx); err != nil {
			return err
		}
	}
	log.Info("primary running", "generation", gen, "backup", o.Peer, "epoch", describeEpoch(&cfg), "machine", cfg.Machine)
	stop := statusLines(o.Status, o.StatusEvery, func() string {
		st := out.Stats()
		return primary.Stats.Line(time.Now(), fmt.Sprintf("p50 %v p99 %v", st.Delay.Quantile(0.5), st.Delay.Quantile(0.99)))
	})
	defer stop()
	err = primary.Run(ctx, conn)
	if errors.Is(err, ckmode.ErrBackupLost) {
		log.Warn("running alone", "err", err)
		err = r.waitOrCancel(ctx)
	}
	return err
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
	arb, fence, err := openFence(o.Arbiter, RoleBackup)
	if err != nil {
		return err
	}
	defer arb.Close()
	disk, err := openDisk(o)
	if err != nil {
		return err
	}
	if disk != nil {
		defer disk.Close()
	}
	var netDev vmm.FrameSink
	deferred := &deferredNet{}
	if o.hasNetDevice() {
		netDev = deferred
	}
	var backend vmm.NetBackend // opened when live; closed after the machine
	defer func() {
		if backend != nil {
			backend.Close()
		}
	}()
	var diskDev vmm.Disk
	diskSize := int64(0)
	if disk != nil {
		diskDev, diskSize = disk, disk.Size()
	}
	r, err := newRunner(o, netDev, diskDev, false)
	if err != nil {
		return err
	}
	defer r.close()
	cfg := o.Checkpoint
	cfg.Machine = o.describe(diskSize)
	backup, err := ckmode.NewBackup(cfg, r, fence, log)
	if err != nil {
		return err
	}
	n.set(func(p *Parts) { p.Machine, p.CheckpointBackup = r.Runner, backup })
	if disk != nil {
		backup.SetDisk(disk) // where going live writes again what the primary may not have
	}
	ln, err := listen(ctx, o)
	if err != nil {
		return err
	}
	defer ln.Close()
	gen, err := backup.Serve(ctx, ln)
	if err != nil {
		return err
	}
	if backend, err = openBackendLive(ctx, o); err != nil {
		return err
	}
	if backend != nil {
		deferred.set(backend)
		if err := backend.Start(r.rx); err != nil {
			return err
		}
	}
	log.Warn("live as primary, unprotected", "generation", gen)
	return r.waitOrCancel(ctx)
}
