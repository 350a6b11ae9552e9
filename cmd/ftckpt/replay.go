package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"golang.org/x/sys/unix"
)

// ftckpt --mode replay: the primary records its guest's execution and
// ships the log; the backup replays it and takes over. The guest runs on
// KVM (1 vCPU, userspace interrupts), or, with --machine sim or where
// /dev/kvm cannot be opened, on replay's software machine (vmm/sim), whose
// tick and kv guests mirror the bundled ones.

// replayConfig checks the replay flags and returns the engine's
// configuration.
func (f *modeFlags) replayConfig(changed func(string) bool) (replay.Config, error) {
	for _, name := range []string{"epoch", "min-epoch", "max-epoch", "dirty-tracking", "vcpus", "irqchip"} {
		if changed(name) {
			return replay.Config{}, fmt.Errorf("--%s does not apply to --mode replay (one vCPU, userspace interrupts, no epochs)", name)
		}
	}
	if err := f.checkMachine(); err != nil {
		return replay.Config{}, err
	}
	if !f.useSim() {
		if _, err := guests.Image(f.machine.guest); err != nil {
			return replay.Config{}, err
		}
	}
	cfg := replay.DefaultConfig()
	cfg.Heartbeat, cfg.FailureTimeout, cfg.LandingDelay = f.heartbeat, f.failureTimeout, f.landingDelay
	cfg.Verify = f.verify
	if err := cfg.Validate(); err != nil {
		return replay.Config{}, err
	}
	return cfg, nil
}

// kvmAvailable says whether /dev/kvm can be opened here.
func kvmAvailable() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// replayHost is one role's machine and its host side.
type replayHost struct {
	plug    *replay.Plug
	m       machine.Stepper
	sim     bool
	netSpec string
	disk    *vmm.FileDisk // nil: no disk
	sg      *simGuest     // the software machine's guest (nil on KVM)
	machine string        // its description for the Hello
	closers []func() error
}

func (h *replayHost) Close() {
	for i := len(h.closers) - 1; i >= 0; i-- {
		h.closers[i]()
	}
}

// newReplayHost builds the machine the flags describe, on a plug the
// engine fills in, with its disk image open.
func (f *modeFlags) newReplayHost() (*replayHost, error) {
	h := &replayHost{plug: &replay.Plug{}, sim: f.useSim()}
	ok := false
	defer func() {
		if !ok {
			h.Close()
		}
	}()
	if f.replayMachine == "auto" {
		which := "KVM"
		if h.sim {
			which = "the software machine (vmm/sim): /dev/kvm cannot be opened here"
		}
		slog.Info("replay machine", "machine", which)
	}
	if h.sim {
		sg, err := f.newSimGuest("replay")
		if err != nil {
			return nil, err
		}
		h.sg = sg
		if h.disk = sg.disk; h.disk != nil {
			h.closers = append(h.closers, h.disk.Close)
		}
		h.netSpec, h.machine = sg.netSpec, sg.machine
		if h.m, err = sim.New(sg.guest, sg.pages, h.plug, sg.params...); err != nil {
			return nil, err
		}
		ok = true
		return h, nil
	}
	guest := f.machine.guest
	netSpec, diskSpec := f.devices.resolve(guest)
	h.netSpec = netSpec
	if diskSpec != "none" {
		d, err := f.devices.openDisk(diskSpec)
		if err != nil {
			return nil, err
		}
		h.disk = d
		h.closers = append(h.closers, d.Close)
	}
	mem, err := parseSize(f.machine.memory)
	if err != nil {
		return nil, fmt.Errorf("--memory: %w", err)
	}
	params, err := parseParams(f.machine.params)
	if err != nil {
		return nil, err
	}
	cfg := replay.KVMConfigFor(guest)
	cfg.MemSize, cfg.Net, cfg.DiskSize = mem, netSpec != "none", 0
	if h.disk != nil {
		cfg.DiskSize = h.disk.Size()
	}
	cfg.Params = params
	m, err := replay.NewKVMMachine(cfg, h.plug)
	if err != nil {
		return nil, err
	}
	h.m = m
	h.closers = append(h.closers, m.Close)
	h.machine = describeMachine("replay", "KVM", 1, netSpec, h.disk)
	ok = true
	return h, nil
}

// openNet opens the network backend: the flags' backend for a KVM guest
// (Ethernet frames); for the software machine, whose frames are bare
// payloads, a plain UDP socket.
func (h *replayHost) openNet() (vmm.NetBackend, error) {
	if h.netSpec == "none" {
		return nil, nil
	}
	if !h.sim {
		return openNet(h.netSpec)
	}
	front, err := h.sg.openFront()
	if err != nil {
		return nil, err
	}
	return front, nil
}

// openNetLive opens the network backend for a backup going live. The
// address may still be held for a moment (a primary on this host dying),
// so a busy address is retried for a few seconds.
func (h *replayHost) openNetLive(ctx context.Context) (vmm.NetBackend, error) {
	return whileBusy(ctx, h.openNet)
}

// outputs builds a role's output buffer for generation gen.
func (h *replayHost) outputs(gen uint64, f outbuf.Fence, net outbuf.NetSink) (*outbuf.Buffer, error) {
	env := outbuf.Env{Generation: gen, Fence: f, Net: net, Clock: outbuf.SystemClock{}}
	if h.disk != nil {
		env.Disk = h.disk
	}
	return outbuf.New(outbuf.DefaultConfig(), env)
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

// runReplay runs the role the flags ask for.
func runReplay(ctx context.Context, f *modeFlags, cfg replay.Config, stdout io.Writer) error {
	switch f.role {
	case "primary":
		return replayPrimary(ctx, f, cfg, stdout)
	case "backup":
		return replayBackup(ctx, f, cfg, stdout)
	}
	return runLocal(ctx, f, func() error { return replayPrimary(ctx, f, cfg, stdout) })
}

// replayPrimary records the guest and ships the log to the backup at
// f.peer.
func replayPrimary(ctx context.Context, f *modeFlags, cfg replay.Config, stdout io.Writer) error {
	h, err := f.newReplayHost()
	if err != nil {
		return err
	}
	defer h.Close()
	cfg.Machine = h.machine
	arb, fence, gen, err := becomePrimary(ctx, f.arbiter)
	if err != nil {
		return err
	}
	defer arb.Close()
	backend, err := h.openNet()
	if err != nil {
		return err
	}
	netOut := &netTarget{}
	var sink outbuf.NetSink
	if backend != nil {
		defer backend.Close()
		netOut.set(backend)
		sink = netOut
	}
	out, err := h.outputs(gen, fence, sink)
	if err != nil {
		return err
	}
	p, err := replay.NewPrimary(cfg, h.m, h.plug, out, fence, gen, slog.Default())
	if err != nil {
		return err
	}
	p.Console = stdout
	if h.disk != nil {
		p.SyncDisk = h.disk.Flush
	}
	var conn net.Conn // nil: alone until a backup joins
	if f.peer != "" {
		if conn, err = dialBackup(ctx, f.peer, 10*time.Second); err != nil {
			return err
		}
	}
	if err := acceptBackups(ctx, f.acceptBackups, p); err != nil {
		return err
	}
	if backend != nil {
		rx := &toPrimary{}
		rx.p.Store(p)
		if err := backend.Start(rx); err != nil {
			return err
		}
	}
	slog.Info("primary recording", "generation", gen, "backup", f.peer, "guest", f.machine.guest)
	stop := statusLines(f.status, p.Stats.PrimaryLine)
	defer stop()
	err = p.Run(ctx, conn)
	if err == nil {
		slog.Info("the guest powered off")
	}
	return err
}

// replayBackup replays the primary's log and goes live if the primary is
// lost and the witness agrees.
func replayBackup(ctx context.Context, f *modeFlags, cfg replay.Config, stdout io.Writer) error {
	h, err := f.newReplayHost()
	if err != nil {
		return err
	}
	defer h.Close()
	cfg.Machine = h.machine
	arb, fence, err := openFence(f.arbiter, "backup")
	if err != nil {
		return err
	}
	defer arb.Close()
	// The network backend opens only when this side goes live: the
	// primary holds it until then.
	netOut := &netTarget{}
	rx := &toPrimary{}
	var backend vmm.NetBackend
	defer func() {
		if backend != nil {
			backend.Close()
		}
	}()
	makeOut := func(gen uint64) (*outbuf.Buffer, error) {
		var sink outbuf.NetSink
		if h.netSpec != "none" {
			b, err := h.openNetLive(ctx)
			if err != nil {
				return nil, err
			}
			backend = b
			netOut.set(b)
			sink = netOut
		}
		return h.outputs(gen, fence, sink)
	}
	b, err := replay.NewBackup(cfg, h.m, h.plug, fence, makeOut, slog.Default())
	if err != nil {
		return err
	}
	b.Console = stdout
	if h.disk != nil {
		b.SyncDisk = h.disk.Flush
	}
	conn, err := connectToPrimary(ctx, f, stdout)
	if err != nil {
		return err
	}
	stop := statusLines(f.status, b.Stats.BackupLine)
	live, err := b.Follow(ctx, conn)
	stop()
	if errors.Is(err, machine.ErrPowerOff) {
		slog.Info("the guest powered off; the backup replayed it to the end")
		return nil
	}
	if err != nil {
		return err
	}
	rx.p.Store(live)
	if backend != nil {
		if strings.HasPrefix(h.netSpec, "tap:") {
			if err := backend.SendFrame(vmm.GratuitousARP(vmm.DefaultGuestMAC, guestIP)); err != nil {
				return fmt.Errorf("announcing the guest after failover: %w", err)
			}
		}
		if err := backend.Start(rx); err != nil {
			return err
		}
	}
	slog.Warn("live as primary, unprotected")
	if err := acceptBackups(ctx, f.acceptBackups, live); err != nil {
		return err
	}
	return live.Run(ctx, nil)
}

// connectToPrimary is a backup's connection to its primary: accepted on
// --listen, or dialled to a running primary's --accept-backups (--join).
func connectToPrimary(ctx context.Context, f *modeFlags, stdout io.Writer) (net.Conn, error) {
	if f.join != "" {
		return dialBackup(ctx, f.join, 10*time.Second)
	}
	ln, err := listenForPrimary(f, stdout)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	conn, err := ln.Accept()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return conn, err
}

// acceptBackups lets backups join p at addr (none if addr is empty) for as
// long as ctx lasts: each one that connects while p runs alone starts from
// a full checkpoint of the running guest; one that comes while p has a
// backup is turned away.
func acceptBackups(ctx context.Context, addr string, p *replay.Primary) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--accept-backups: %w", err)
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	slog.Info("accepting backups", "addr", ln.Addr().String())
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if err := p.Attach(conn); err != nil {
				slog.Warn("a backup tried to join", "from", conn.RemoteAddr(), "err", err)
				conn.Close()
			}
		}
	}()
	return nil
}
