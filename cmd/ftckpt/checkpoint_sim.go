package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"golang.org/x/sys/unix"
)

// Checkpoint mode on the software machine: where /dev/kvm cannot be
// opened, `--mode checkpoint --machine sim` (or auto) runs the software machine's guest
// as a checkpoint-mode Guest (sim.CheckpointGuest: one vCPU goroutine,
// its dirty pages tracked by the interpreter) through the same engine,
// output buffer, held disk, witness and failover as a KVM guest.

// useSim says whether the flags ask for the software machine.
func (f *modeFlags) useSim() bool {
	return f.replayMachine == "sim" || f.replayMachine == "auto" && !kvmAvailable()
}

// simGuest is the software machine's guest, its disk, network spec and
// Hello description, as the flags give them.
type simGuest struct {
	guest   string
	pages   int
	params  []sim.Param
	netSpec string
	disk    *vmm.FileDisk // nil: no disk
	machine string
}

// newSimGuest resolves the flags for the software machine and opens the
// disk image (the caller closes it).
func (f *modeFlags) newSimGuest(mode string) (*simGuest, error) {
	g := &simGuest{guest: f.machine.guest}
	mem, err := parseSize(f.machine.memory)
	if err != nil {
		return nil, fmt.Errorf("--memory: %w", err)
	}
	g.pages = int(mem / sim.PageSize)
	if g.params, err = simParams(f.machine.params); err != nil {
		return nil, err
	}
	netSpec, diskSpec := f.devices.resolve(g.guest)
	if g.guest == "kv" && f.devices.disk == "auto" {
		diskSpec = "ftckpt-disk.img" // the software kv guest keeps its table on disk
	}
	if kind, _, _ := strings.Cut(netSpec, ":"); netSpec != "none" && kind != "udp" {
		return nil, fmt.Errorf("--net %s: the software machine's network is udp:ADDR", netSpec)
	}
	g.netSpec = netSpec
	if diskSpec != "none" {
		if g.disk, err = f.devices.openDisk(diskSpec); err != nil {
			return nil, err
		}
	}
	g.machine = describeMachine(mode, "the software machine", 1, netSpec, g.disk)
	return g, nil
}

// simParams turns --param key=value into the software machine's numeric
// parameters.
func simParams(flags []string) ([]sim.Param, error) {
	params, err := parseParams(flags)
	if err != nil {
		return nil, err
	}
	var out []sim.Param
	for k, v := range params {
		n, err := strconv.ParseUint(v, 0, 64)
		if err != nil {
			return nil, fmt.Errorf("--param %s=%s: the software machine's parameters are numbers", k, v)
		}
		out = append(out, sim.Param{Name: k, Value: n})
	}
	return out, nil
}

// openFront opens the software machine's UDP front, or nil without a
// network.
func (g *simGuest) openFront() (*bareUDP, error) {
	if g.netSpec == "none" {
		return nil, nil
	}
	_, addr, _ := strings.Cut(g.netSpec, ":")
	return newBareUDP(addr)
}

// whileBusy calls open until it fails with something other than
// EADDRINUSE, for a few seconds: a backup going live opens the address a
// primary on this host may still hold as it dies.
func whileBusy[T any](ctx context.Context, open func() (T, error)) (T, error) {
	for tries := 0; ; tries++ {
		v, err := open()
		if err == nil || !errors.Is(err, unix.EADDRINUSE) || tries == 50 {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// guestPort is a CheckpointGuest as the front's receiver.
type guestPort struct{ g *sim.CheckpointGuest }

func (p guestPort) Receive(f []byte) bool { return p.g.Receive(f) }
func (p guestPort) Poll()                 {} // Receive brings the vCPU round itself

// simDevices are the software machine's devices in checkpoint mode:
// frames to net, the disk (nil: none) and the console. A primary's net
// holds frames in its output buffer (heldNet) and its disk is its HeldDisk,
// whose FLUSH waits for durability; a backup's reach the world only once
// it is live (its guest does not run before).
type simDevices struct {
	net     vmm.FrameSink
	disk    vmm.Disk
	console io.Writer
}

func (d simDevices) SendFrame(f []byte) error { return d.net.SendFrame(f) }

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

// runPrimarySim is runPrimary on the software machine.
func runPrimarySim(ctx context.Context, f *modeFlags, cfg ckmode.Config, stdout io.Writer) error {
	sg, err := f.newSimGuest("checkpoint")
	if err != nil {
		return err
	}
	if sg.disk != nil {
		defer sg.disk.Close()
	}
	cfg.Machine = sg.machine
	arb, fence, gen, err := becomePrimary(ctx, f.arbiter)
	if err != nil {
		return err
	}
	defer arb.Close()
	front, err := sg.openFront()
	if err != nil {
		return err
	}
	env := outbuf.Env{Generation: gen, Fence: fence, Clock: outbuf.SystemClock{}}
	if front != nil {
		defer front.Close()
		env.Net = front
	}
	var primary *ckmode.Primary
	pos := func() uint64 { return primary.Position() }
	var held *ckmode.HeldDisk
	if sg.disk != nil {
		held = ckmode.NewHeldDisk(sg.disk, pos)
		env.Disk = held.Sink()
	}
	out, err := outbuf.New(outbuf.DefaultConfig(), env)
	if err != nil {
		return err
	}
	devs := simDevices{net: heldNet{out, pos}, console: stdout}
	if held != nil {
		devs.disk = held
	}
	g, err := sim.NewCheckpointGuest(sg.guest, sg.pages, devs, sg.params...)
	if err != nil {
		return err
	}
	defer g.Close()
	if held != nil {
		held.Attach(out)
		held.SetPoll(g.Poke) // a held-back FLUSH completes
	}
	if primary, err = ckmode.NewPrimary(cfg, g, out, fence, gen, slog.Default()); err != nil {
		return err
	}
	if held != nil {
		primary.SetDisk(held)
	}
	return runReplicated(ctx, f, primary, out, gen, "the software machine",
		func() error {
			if err := g.Start(); err != nil {
				return err
			}
			if front != nil {
				return front.Start(guestPort{g})
			}
			return nil
		},
		func() error { return waitGuest(ctx, g) })
}

// waitGuest waits until the guest stops (nil if it powered off) or ctx
// ends.
func waitGuest(ctx context.Context, g *sim.CheckpointGuest) error {
	select {
	case <-g.Stopped():
		return g.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runBackupSim is runBackup on the software machine.
func runBackupSim(ctx context.Context, f *modeFlags, cfg ckmode.Config, stdout io.Writer) error {
	sg, err := f.newSimGuest("checkpoint")
	if err != nil {
		return err
	}
	if sg.disk != nil {
		defer sg.disk.Close()
	}
	cfg.Machine = sg.machine
	arb, fence, err := openFence(f.arbiter, "backup")
	if err != nil {
		return err
	}
	defer arb.Close()
	netOut := &netTarget{}
	devs := simDevices{net: netOut, console: stdout}
	if sg.disk != nil {
		devs.disk = sg.disk
	}
	g, err := sim.NewCheckpointGuest(sg.guest, sg.pages, devs, sg.params...)
	if err != nil {
		return err
	}
	defer g.Close()
	backup, err := ckmode.NewBackup(cfg, g, fence, slog.Default())
	if err != nil {
		return err
	}
	if sg.disk != nil {
		backup.SetDisk(sg.disk) // where going live writes again what the primary may not have
	}
	var front *bareUDP
	defer func() {
		if front != nil {
			front.Close()
		}
	}()
	return followPrimaries(ctx, f, stdout, backup,
		func() error {
			opened, err := whileBusy(ctx, sg.openFront)
			if err != nil || opened == nil {
				return err
			}
			front = opened
			netOut.set(front)
			return front.Start(guestPort{g})
		},
		func() error { return waitGuest(ctx, g) })
}
