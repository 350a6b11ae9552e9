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
	env := outbuf.Env{Generation: gen, Fence: fence, Net: h.netSink(), Clock: outbuf.SystemClock{}}
	var netDev vmm.FrameSink
	var held *ckmode.HeldDisk
	var diskDev vmm.Disk
	if h.disk != nil {
		held = ckmode.NewHeldDisk(h.disk, pos)
		env.Disk, diskDev = held.Sink(), held
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
	cfg.Machine = o.describe(h.diskSize())
	// The machine itself, not the runner around it: the primary looks for
	// what it can do besides machine.Runner (machine.PauseSaver).
	if primary, err = ckmode.NewPrimary(cfg, r.Runner, out, fence, gen, log); err != nil {
		return err
	}
	n.set(func(p *Parts) { p.Machine, p.Outputs, p.CheckpointPrimary = r.Runner, out, primary })
	if held != nil {
		primary.SetDisk(held)
	}
	conn, err := dialPeer(ctx, o, o.Peer, 10*time.Second)
	if err != nil {
		return err
	}
	if err := r.Start(); err != nil {
		return err
	}
	if h.backend != nil {
		if err := h.backend.Start(r.rx); err != nil {
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
	r, err := newRunner(o, netDev, diskDev, false)
	if err != nil {
		return err
	}
	defer r.close()
	cfg := o.Checkpoint
	cfg.Machine = o.describe(h.diskSize())
	backup, err := ckmode.NewBackup(cfg, r, fence, log)
	if err != nil {
		return err
	}
	n.set(func(p *Parts) { p.Machine, p.CheckpointBackup = r.Runner, backup })
	if h.disk != nil {
		backup.SetDisk(h.disk) // where going live writes again what the primary may not have
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
	if err := h.goLive(ctx); err != nil {
		return err
	}
	if h.backend != nil {
		deferred.set(h.backend)
		if err := h.backend.Start(r.rx); err != nil {
			return err
		}
	}
	log.Warn("live as primary, unprotected", "generation", gen)
	return r.waitOrCancel(ctx)
}
