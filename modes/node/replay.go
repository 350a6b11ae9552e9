package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/witness"
)

// Replay mode's two roles.

// newStepper builds o's machine for replay mode on env (the engine's plug,
// through which every device reads time, disk data and frames): KVM's, one
// vCPU with userspace interrupts, or the software machine. close releases
// it.
func newStepper(o *Options, env machine.Env, diskSize int64) (m machine.Stepper, close func(), err error) {
	if o.Machine == MachineSim {
		params, err := sim.ParseParams(o.Params)
		if err != nil {
			return nil, nil, err
		}
		sm, err := sim.New(o.Guest, int(o.Memory/sim.PageSize), env, params...)
		if err != nil {
			return nil, nil, err
		}
		return sm, func() {}, nil
	}
	km, err := replay.NewKVMMachine(replay.KVMConfig{
		Guest: o.Guest, MemSize: o.Memory, Params: o.Params, Net: o.hasNet(), DiskSize: diskSize,
	}, env)
	if err != nil {
		return nil, nil, err
	}
	return km, func() { km.Close() }, nil
}

// toPrimary delivers received frames to the primary the engine is (a
// backup's, once it is live; dropped before).
type toPrimary struct {
	p atomic.Pointer[replay.Primary]
}

func (t *toPrimary) Receive(frame []byte) bool {
	if p := t.p.Load(); p != nil {
		p.Receive(frame)
		return true
	}
	return false
}

func (t *toPrimary) Poll() {}

// acceptBackups lets backups join p at o.AcceptBackups (none if empty) for
// as long as ctx lasts.
func acceptBackups(ctx context.Context, o *Options, p *replay.Primary) error {
	if o.AcceptBackups == "" {
		return nil
	}
	ln, err := net.Listen("tcp", o.AcceptBackups)
	if err != nil {
		return fmt.Errorf("--accept-backups: %w", err)
	}
	p.AcceptBackups(ctx, ln)
	return nil
}

// runReplayPrimary records the guest's execution and ships the log to the
// backup at o.Peer; without one it runs alone and lets backups join.
func (n *Node) runReplayPrimary(ctx context.Context) error {
	o := &n.o
	log := o.log()
	arb, fence, gen, err := becomePrimary(ctx, o.Arbiter)
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
	backend, err := openBackend(o)
	if err != nil {
		return err
	}
	if backend != nil {
		defer backend.Close()
	}
	plug := &replay.Plug{}
	m, closeM, err := newStepper(o, plug, diskSizeOf(disk))
	if err != nil {
		return err
	}
	defer closeM()
	out, err := replayOutputs(gen, fence, backend, disk)
	if err != nil {
		return err
	}
	cfg := o.Replay
	cfg.Machine = o.describe(diskSizeOf(disk))
	p, err := replay.NewPrimary(cfg, m, plug, out, fence, gen, log)
	if err != nil {
		return err
	}
	n.set(func(parts *Parts) { parts.Machine, parts.Outputs, parts.ReplayPrimary = m, out, p })
	p.Console = o.Console
	if disk != nil {
		p.SyncDisk = disk.Flush
	}
	var conn net.Conn // nil: alone until a backup joins
	if o.Peer != "" {
		if conn, err = dialPeer(ctx, o.Peer, 10*time.Second); err != nil {
			return err
		}
	}
	if err := acceptBackups(ctx, o, p); err != nil {
		return err
	}
	if backend != nil {
		rx := &toPrimary{}
		rx.p.Store(p)
		if err := backend.Start(rx); err != nil {
			return err
		}
	}
	log.Info("primary recording", "generation", gen, "backup", o.Peer, "guest", o.Guest)
	stop := statusLines(o.Status, o.StatusEvery, p.Stats.PrimaryLine)
	defer stop()
	err = p.Run(ctx, conn)
	if err == nil {
		log.Info("the guest powered off")
	}
	return err
}

// replayOutputs is a role's output buffer for generation gen: frames to
// backend and writes to disk (either may be nil).
func replayOutputs(gen uint64, fence *witness.Fence, backend vmm.NetBackend, disk *vmm.FileDisk) (*outbuf.Buffer, error) {
	env := outbuf.Env{Generation: gen, Fence: fence, Net: unplugged{}, Clock: outbuf.SystemClock{}}
	if backend != nil {
		env.Net = backend
	}
	if disk != nil {
		env.Disk = disk
	}
	return outbuf.New(outbuf.DefaultConfig(), env)
}

// unplugged is the network of a guest given none: the software machine's
// network device is always there, and what it sends is lost, as from a NIC
// with no cable.
type unplugged struct{}

func (unplugged) SendFrame([]byte) error { return nil }

func diskSizeOf(d *vmm.FileDisk) int64 {
	if d == nil {
		return 0
	}
	return d.Size()
}

// runReplayBackup replays the primary's log and, when the primary is lost
// and the witness agrees, goes live: it opens the backends and runs on as
// a primary alone (letting backups join at o.AcceptBackups).
func (n *Node) runReplayBackup(ctx context.Context) error {
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
	plug := &replay.Plug{}
	m, closeM, err := newStepper(o, plug, diskSizeOf(disk))
	if err != nil {
		return err
	}
	defer closeM()
	// The network backend opens only when this side goes live: the
	// primary holds it until then.
	var backend vmm.NetBackend
	defer func() {
		if backend != nil {
			backend.Close()
		}
	}()
	makeOut := func(gen uint64) (*outbuf.Buffer, error) {
		b, err := openBackendLive(ctx, o)
		if err != nil {
			return nil, err
		}
		backend = b
		return replayOutputs(gen, fence, backend, disk)
	}
	cfg := o.Replay
	cfg.Machine = o.describe(diskSizeOf(disk))
	b, err := replay.NewBackup(cfg, m, plug, fence, makeOut, log)
	if err != nil {
		return err
	}
	n.set(func(parts *Parts) { parts.Machine, parts.ReplayBackup = m, b })
	b.Console = o.Console
	if disk != nil {
		b.SyncDisk = disk.Flush
	}
	conn, err := connectToPrimary(ctx, o)
	if err != nil {
		return err
	}
	stop := statusLines(o.Status, o.StatusEvery, b.Stats.BackupLine)
	live, err := b.Follow(ctx, conn)
	stop()
	if errors.Is(err, machine.ErrPowerOff) {
		log.Info("the guest powered off; the backup replayed it to the end")
		return nil
	}
	if err != nil {
		return err
	}
	n.set(func(parts *Parts) { parts.ReplayPrimary = live })
	if backend != nil {
		rx := &toPrimary{}
		rx.p.Store(live)
		if err := backend.Start(rx); err != nil {
			return err
		}
	}
	log.Warn("live as primary, unprotected")
	if err := acceptBackups(ctx, o, live); err != nil {
		return err
	}
	return live.Run(ctx, nil)
}

// connectToPrimary is a backup's connection to its primary: accepted on
// o.Listen, or dialled to a running primary's accept address (o.Join).
func connectToPrimary(ctx context.Context, o *Options) (net.Conn, error) {
	if o.Join != "" {
		return dialPeer(ctx, o.Join, 10*time.Second)
	}
	ln, err := listen(ctx, o)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	conn, err := ln.Accept()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return conn, err
}
