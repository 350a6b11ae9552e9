package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmmachine"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/witness"
)

// Replay mode's two roles.

// newStepper builds o's machine for replay mode on env (the engine's plug,
// through which every device reads time, disk data and frames): KVM's, one
// vCPU with userspace interrupts, or the software machine. close releases
// it.
//
// The machine is held by the node's operator (ftckpt ctl pause) through a
// holdStepper between it and the engine.
func newStepper(o *Options, env machine.Env, diskSize int64) (machine.Stepper, func(), error) {
	m, closeM, err := newBareStepper(o, env, diskSize)
	if err != nil {
		return nil, nil, err
	}
	return o.ops.wrapStepper(m), closeM, nil
}

func newBareStepper(o *Options, env machine.Env, diskSize int64) (m machine.Stepper, close func(), err error) {
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
	km, err := kvmmachine.NewStepper(kvmmachine.StepperConfig{
		Guest: o.Guest, MemSize: o.Memory, Params: o.Params, Net: o.hasNet(), DiskSize: diskSize,
		Track: func(m *vmm.Machine) (kvmmachine.Tracker, error) { return dirtylog.New(m, dirtylog.ModeBitmap) },
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
// as long as ctx lasts, and with o.Respawn starts them (watchProtection); stop
// ends that and stops the last backup started.
func acceptBackups(ctx context.Context, o *Options, p *replay.Primary) (stop func(), err error) {
	if o.AcceptBackups == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", o.AcceptBackups)
	if err != nil {
		return nil, fmt.Errorf("--accept-backups: %w", err)
	}
	rs := newRespawner(o, ln)
	p.AcceptBackups(ctx, secure(o, ln, "--accept-backups"))
	return watchProtection(rs, p.Protected), nil
}

// runReplayPrimary records the guest's execution and ships the log to the
// backup at o.Peer; without one it runs alone and lets backups join.
func (n *Node) runReplayPrimary(ctx context.Context) error {
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
	plug := &replay.Plug{}
	m, closeM, err := newStepper(o, plug, h.diskSize())
	if err != nil {
		return err
	}
	defer n.keepOrClose(m.Memory(), closeM)
	out, err := replayOutputs(gen, fence, h)
	if err != nil {
		return err
	}
	cfg := o.Replay
	cfg.Machine = o.describe(h.diskSize())
	p, err := replay.NewPrimary(cfg, m, plug, out, fence, gen, log)
	if err != nil {
		return err
	}
	n.set(func(parts *Parts) { parts.Machine, parts.Outputs, parts.ReplayPrimary = bare(m), out, p })
	p.Console = o.Console
	if h.disk != nil {
		p.SyncDisk = h.disk.Flush
		if o.DiskMode == DiskMirrored {
			p.MirrorDisk(h.disk.Size())
		}
	}
	var conn net.Conn // nil: alone until a backup joins
	if o.Peer != "" {
		if conn, err = dialPeer(ctx, o, o.Peer, 10*time.Second); err != nil {
			return err
		}
	}
	stopAccepting, err := acceptBackups(ctx, o, p)
	if err != nil {
		return err
	}
	defer stopAccepting()
	if err := startRx(h, p); err != nil {
		return err
	}
	log.Info("primary recording", "generation", gen, "backup", o.Peer, "guest", o.Guest, "machine", cfg.Machine, "pid", pid)
	stop := statusLines(o.Status, o.StatusEvery, p.Stats.PrimaryLine)
	defer stop()
	err = p.Run(ctx, conn)
	if err == nil {
		log.Info("the guest powered off")
	}
	return err
}

// replayOutputs is a role's output buffer for generation gen: frames to
// h's backend (lost without one) and writes to its disk.
func replayOutputs(gen uint64, fence *witness.Fence, h *host) (*outbuf.Buffer, error) {
	env := outbuf.Env{Generation: gen, Fence: fence, Net: h.netSink(), Clock: outbuf.SystemClock{}}
	if h.disk != nil {
		env.Disk = h.disk
	}
	return outbuf.New(outbuf.DefaultConfig(), env)
}

// startRx delivers the frames h's backend receives to p.
func startRx(h *host, p *replay.Primary) error {
	if h.backend == nil {
		return nil
	}
	rx := &toPrimary{}
	rx.p.Store(p)
	return h.backend.Start(rx)
}

// runReplayBackup replays the primary's log and, when the primary is lost
// and the witness agrees, goes live: it opens the backends and runs on as
// a primary alone (letting backups join at o.AcceptBackups). A backup that
// joins (o.Join) and loses its primary before the full checkpoint came (a
// primary that has a backup turns it away) joins again, on a fresh
// machine: it never protected the guest, so nothing is lost.
func (n *Node) runReplayBackup(ctx context.Context) error {
	o := &n.o
	log := o.log()
	arb, fence, err := openFence(o, RoleBackup)
	if err != nil {
		return err
	}
	defer arb.Close()
	h, err := openHost(o, false) // the network opens when live: the primary holds it until then
	if err != nil {
		return err
	}
	defer h.close()
	for {
		live, closeM, again, err := n.followPrimary(ctx, h, fence)
		if err == nil {
			defer n.keepOrClose(n.Parts().Machine.Memory(), closeM) // live, it may hand its guest over
			return n.runLive(ctx, h, live)
		}
		closeM()
		if errors.Is(err, machine.ErrPowerOff) {
			log.Info("the guest powered off; the backup replayed it to the end")
			return nil
		}
		if !again || o.Join == "" || ctx.Err() != nil {
			return err
		}
		log.Warn("the primary went away before its full checkpoint; joining again", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(joinRetry):
		}
	}
}

// followPrimary builds a backup on a fresh machine and follows one
// primary. It returns the primary the backup became (err nil), how to
// close the machine, and whether joining again is worth it: the backup
// connected (a refusal at the handshake is final) and never held a full
// checkpoint.
func (n *Node) followPrimary(ctx context.Context, h *host, fence *witness.Fence) (live *replay.Primary, closeM func(), again bool, err error) {
	o := &n.o
	closeM = func() {}
	plug := &replay.Plug{}
	m, closeMachine, err := newStepper(o, plug, h.diskSize())
	if err != nil {
		return nil, closeM, false, err
	}
	closeM = closeMachine
	seeded := o.seedMemory(m.Memory())
	makeOut := func(gen uint64) (*outbuf.Buffer, error) {
		if err := h.goLive(ctx); err != nil {
			return nil, err
		}
		return replayOutputs(gen, fence, h)
	}
	cfg := o.Replay
	cfg.Machine = o.describe(h.diskSize())
	b, err := replay.NewBackup(cfg, m, plug, fence, makeOut, o.log())
	if err != nil {
		return nil, closeM, false, err
	}
	n.set(func(parts *Parts) { parts.Machine, parts.ReplayBackup = bare(m), b })
	if seeded {
		b.HoldsMemory()
		o.log().Info("this host's memory holds the guest as it handed it over: the new primary sends only what changed since")
	}
	b.Console = o.Console
	if h.disk != nil {
		b.SyncDisk = h.disk.Flush
		if o.DiskMode == DiskMirrored {
			if err := b.MirrorDisk(h.disk); err != nil {
				return nil, closeM, false, err
			}
		}
	}
	conn, err := connectToPrimary(ctx, o)
	if err != nil {
		return nil, closeM, false, err
	}
	stop := statusLines(o.Status, o.StatusEvery, b.Stats.BackupLine)
	live, err = b.Follow(ctx, conn)
	stop()
	// A backup whose own image failed stops: joining again would fail again.
	return live, closeM, b.Stats.Applied.Load() == 0 && !errors.Is(err, replay.ErrImage), err
}

// runLive runs the primary a backup became, alone, letting backups join.
func (n *Node) runLive(ctx context.Context, h *host, live *replay.Primary) error {
	o := &n.o
	n.set(func(parts *Parts) { parts.ReplayPrimary = live })
	n.ops.live.Store(true)
	if err := startRx(h, live); err != nil {
		return err
	}
	o.log().Warn("live as primary, unprotected", "pid", os.Getpid())
	stopAccepting, err := acceptBackups(ctx, o, live)
	if err != nil {
		return err
	}
	defer stopAccepting()
	return live.Run(ctx, nil)
}

// connectToPrimary is a backup's connection to its primary: accepted on
// o.Listen, or dialled to a running primary's accept address (o.Join),
// again until one is there (a primary that turns this backup away, having
// one, ends it: replay's Follow takes one connection).
func connectToPrimary(ctx context.Context, o *Options) (net.Conn, error) {
	if o.Join != "" {
		return joinDialer(o)(ctx) // until a primary is there
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
