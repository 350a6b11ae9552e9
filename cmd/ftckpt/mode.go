package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/witness"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// modeFlags are the root command's flags: ftckpt --mode checkpoint ...
type modeFlags struct {
	mode           string
	role           string
	peer           string
	listen         string
	epoch          string
	minEpoch       time.Duration
	maxEpoch       time.Duration
	arbiter        string
	verify         bool
	heartbeat      time.Duration
	failureTimeout time.Duration
	dirtyTracking  string
	status         time.Duration
	readyFD        int
	replayMachine  string
	landingDelay   time.Duration
	join           string
	acceptBackups  string
	machine        machineFlags
	devices        deviceFlags
}

// backupReadyPrefix starts the line a backup prints once it listens.
const backupReadyPrefix = "ftckpt-backup-listening "

func addModeFlags(root *cobra.Command) {
	f := &modeFlags{}
	fl := root.Flags()
	fl.StringVar(&f.mode, "mode", "", "replication mode: replay (1 vCPU, record/replay) or checkpoint (multi-vCPU, epochs)")
	fl.StringVar(&f.role, "role", "", "primary or backup; empty runs both locally (the backup as a child process on loopback)")
	fl.StringVar(&f.peer, "peer", "", "the backup's HOST:PORT (primary)")
	fl.StringVar(&f.listen, "listen", "", "address to accept the primary on (backup)")
	fl.StringVar(&f.epoch, "epoch", "25ms", "checkpoint interval, or auto (adapts between --min-epoch and --max-epoch)")
	fl.DurationVar(&f.minEpoch, "min-epoch", 5*time.Millisecond, "shortest epoch for --epoch auto")
	fl.DurationVar(&f.maxEpoch, "max-epoch", 500*time.Millisecond, "longest epoch for --epoch auto")
	fl.StringVar(&f.arbiter, "arbiter", witness.DefaultSpec, "who decides failover: raft://H:P,H:P,H:P or disk:PATH[#OFFSET]")
	fl.BoolVar(&f.verify, "verify", false, "send a memory hash with every checkpoint (replay: every full checkpoint); the backup checks it")
	fl.DurationVar(&f.heartbeat, "heartbeat", 50*time.Millisecond, "heartbeat interval")
	fl.DurationVar(&f.failureTimeout, "failure-timeout", 500*time.Millisecond, "silence that means the peer is gone")
	fl.StringVar(&f.dirtyTracking, "dirty-tracking", "auto", "bitmap, ring or auto")
	fl.DurationVar(&f.status, "status-every", time.Second, "how often the primary prints its status line (0: never)")
	fl.IntVar(&f.readyFD, "ready-fd", 0, "backup: write the listening address to this inherited fd (for a local run)")
	fl.MarkHidden("ready-fd")
	fl.StringVar(&f.replayMachine, "machine", "auto", "the guest's machine: kvm, sim (the software machine: one vCPU, its own guests) or auto (kvm if /dev/kvm opens)")
	fl.StringVar(&f.join, "join", "", "replay backup: join the running primary at HOST:PORT (its --accept-backups) instead of listening")
	fl.StringVar(&f.acceptBackups, "accept-backups", "", "replay primary (and a backup once live): accept backups that --join at ADDR, one at a time")
	fl.DurationVar(&f.landingDelay, "landing-delay", replay.DefaultConfig().LandingDelay, "replay: how long a due interrupt waits for a synchronous exit before the guest is kicked")
	f.machine.add(root, "kv")
	f.devices.add(root)
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		if f.mode == "" {
			return cmd.Help()
		}
		cfg, err := f.config(cmd.Flags().Changed)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
		defer stop()
		err = runMode(ctx, f, cfg, cmd)
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			slog.Info("stopped by a signal")
			return nil
		}
		return err
	}
}

// runMode runs the mode and role the flags name.
func runMode(ctx context.Context, f *modeFlags, cfg ckmode.Config, cmd *cobra.Command) error {
	if f.mode == "replay" {
		rcfg, err := f.replayConfig(cmd.Flags().Changed)
		if err != nil {
			return err
		}
		return runReplay(ctx, f, rcfg, cmd.OutOrStdout())
	}
	primary, backup := runPrimary, runBackup
	if f.useSim() {
		primary, backup = runPrimarySim, runBackupSim
	}
	if f.replayMachine == "auto" {
		which := "KVM"
		if f.useSim() {
			which = "the software machine (vmm/sim): /dev/kvm cannot be opened here"
		}
		slog.Info("checkpoint machine", "machine", which)
	}
	switch f.role {
	case "primary":
		return primary(ctx, f, cfg, cmd.OutOrStdout())
	case "backup":
		return backup(ctx, f, cfg, cmd.OutOrStdout())
	}
	return runLocal(ctx, f, func() error { return primary(ctx, f, cfg, cmd.OutOrStdout()) })
}

// config validates the flags and returns checkpoint mode's configuration
// (replay's is replayConfig, after the checks both share). changed says
// whether a flag was set.
func (f *modeFlags) config(changed func(string) bool) (ckmode.Config, error) {
	switch f.mode {
	case "checkpoint", "replay":
	default:
		return ckmode.Config{}, fmt.Errorf("--mode %q: want checkpoint or replay", f.mode)
	}
	switch {
	case f.role != "" && f.role != "primary" && f.role != "backup":
		return ckmode.Config{}, fmt.Errorf("--role %q: want primary, backup, or nothing to run both here", f.role)
	case f.mode == "checkpoint" && (f.join != "" || f.acceptBackups != ""):
		return ckmode.Config{}, errors.New("--join and --accept-backups apply to --mode replay")
	case f.role == "primary" && f.peer == "" && f.acceptBackups == "":
		return ckmode.Config{}, errors.New("--role primary needs --peer HOST:PORT (the backup), or, in replay mode, --accept-backups ADDR")
	case f.role == "backup" && (f.listen == "") == (f.join == ""):
		return ckmode.Config{}, errors.New("--role backup needs --listen ADDR, or, in replay mode, --join HOST:PORT (one of them)")
	case f.role == "" && (f.join != "" || f.acceptBackups != ""):
		return ckmode.Config{}, errors.New("--join and --accept-backups need --role (a local run makes its own backup)")
	}
	if err := f.devices.validate(); err != nil {
		return ckmode.Config{}, err
	}
	if f.mode == "replay" {
		return ckmode.Config{}, nil
	}
	if changed("landing-delay") {
		return ckmode.Config{}, errors.New("--landing-delay applies to --mode replay")
	}
	if err := f.checkMachine(); err != nil {
		return ckmode.Config{}, err
	}
	sim := f.useSim()
	if sim {
		why := ""
		if f.replayMachine == "auto" {
			why = ", chosen because /dev/kvm cannot be opened here"
		}
		for _, name := range []string{"vcpus", "irqchip", "dirty-tracking"} {
			if changed(name) {
				return ckmode.Config{}, fmt.Errorf("--%s does not apply to the software machine (one vCPU, its own interrupts and dirty tracking%s)", name, why)
			}
		}
	} else if _, err := dirtylog.ParseMode(f.dirtyTracking); err != nil {
		return ckmode.Config{}, fmt.Errorf("--dirty-tracking: %w", err)
	}
	cfg := ckmode.DefaultConfig()
	if f.epoch == "auto" {
		cfg.EpochAuto, cfg.Epoch = true, max(f.minEpoch, min(f.maxEpoch, cfg.Epoch))
	} else {
		d, err := time.ParseDuration(f.epoch)
		if err != nil {
			return ckmode.Config{}, fmt.Errorf("--epoch %q: want a duration such as 25ms, or auto", f.epoch)
		}
		cfg.Epoch = d
	}
	cfg.MinEpoch, cfg.MaxEpoch = f.minEpoch, f.maxEpoch
	cfg.Verify, cfg.Heartbeat, cfg.FailureTimeout = f.verify, f.heartbeat, f.failureTimeout
	if err := cfg.Validate(); err != nil {
		return ckmode.Config{}, err
	}
	if !sim {
		if _, _, err := f.machine.config(io.Discard); err != nil {
			return ckmode.Config{}, err
		}
	}
	return cfg, nil
}

// checkMachine checks --machine, and that the software machine, if it is
// the one, runs the guest asked for.
func (f *modeFlags) checkMachine() error {
	switch f.replayMachine {
	case "auto", "kvm", "sim":
	default:
		return fmt.Errorf("--machine %q: want kvm, sim or auto", f.replayMachine)
	}
	if f.useSim() && !slices.Contains(sim.Guests(), f.machine.guest) {
		return fmt.Errorf("--guest %q: the software machine runs %s", f.machine.guest, strings.Join(sim.Guests(), ", "))
	}
	return nil
}

// runLocal runs the backup as a child process on loopback and the primary
// here (primary, once f.peer is the child's address): the whole thing on
// one host, for trying it out. The child shares this terminal, so it keeps
// printing after the primary dies (kill -9 this process to watch it go
// live); it reports its address on a pipe. When the primary ends cleanly
// (the guest powered off) the child is given a moment to finish too.
func runLocal(ctx context.Context, f *modeFlags, primary func() error) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	args := append([]string{"--role", "backup", "--listen", "127.0.0.1:0", "--ready-fd", "3"}, os.Args[1:]...)
	child := exec.Command(self, args...)
	child.Stdout, child.Stderr, child.ExtraFiles = os.Stdout, os.Stderr, []*os.File{w}
	if err := child.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting the backup process: %w", err)
	}
	w.Close()
	exited := make(chan struct{})
	go func() { child.Wait(); close(exited) }()
	line, err := bufio.NewReader(r).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), backupReadyPrefix)
	if !ok {
		<-exited
		return fmt.Errorf("the backup process ended before listening (%v)", err)
	}
	slog.Info("backup process is listening", "pid", child.Process.Pid, "addr", addr)
	f.peer = addr
	err = primary()
	wait := time.Duration(0)
	if err == nil {
		wait = 10 * time.Second
	}
	select {
	case <-exited:
	case <-time.After(wait):
		stopChild(child.Process, exited, localStopGrace)
	}
	return err
}

// localStopGrace is how long a local run's backup has to end after SIGTERM
// before it is killed.
const localStopGrace = 5 * time.Second

// stopChild asks a child process to end (SIGTERM) and kills it if it has not
// within grace; it returns once exited is closed.
func stopChild(p *os.Process, exited <-chan struct{}, grace time.Duration) {
	p.Signal(unix.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		slog.Warn("the backup process did not end; killing it", "pid", p.Pid, "after", grace)
		p.Kill()
		<-exited
	}
}

// newMachine builds the machine both roles run, with the dirty tracking
// the flags ask for.
func (f *modeFlags) newMachine(console io.Writer, tracking bool) (*vmm.Machine, []byte, dirtylog.Mode, error) {
	mcfg, img, err := f.machine.config(console)
	if err != nil {
		return nil, nil, 0, err
	}
	mode, err := dirtylog.ParseMode(f.dirtyTracking)
	if err != nil {
		return nil, nil, 0, err
	}
	if tracking {
		host, err := dirtylog.ProbeHost()
		if err != nil {
			return nil, nil, 0, err
		}
		if mcfg.DirtyRingEntries, err = dirtylog.RingEntriesFor(mode, mcfg.MemSize, host); err != nil {
			return nil, nil, 0, err
		}
	}
	m, err := vmm.New(mcfg)
	return m, img, mode, err
}

// runPrimary runs the guest and replicates it to the backup at f.peer.
func runPrimary(ctx context.Context, f *modeFlags, cfg ckmode.Config, stdout io.Writer) error {
	m, img, mode, err := f.newMachine(stdout, true)
	if err != nil {
		return err
	}
	defer m.Close()
	arb, fence, gen, err := becomePrimary(ctx, f.arbiter)
	if err != nil {
		return err
	}
	defer arb.Close()

	var primary *ckmode.Primary
	pos := func() uint64 { return primary.Position() }
	netOut := &netTarget{}
	var held *ckmode.HeldDisk
	var diskOut outbuf.Disk
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: gen, Fence: fence, Net: netOut, Disk: diskFwd{&diskOut}, Clock: outbuf.SystemClock{}})
	if err != nil {
		return err
	}
	devs, err := f.devices.attach(m, f.machine.guest,
		func(real vmm.FrameSink) vmm.FrameSink { netOut.set(real.(vmm.NetBackend)); return heldNet{out, pos} },
		func(real vmm.Disk) vmm.Disk {
			held = ckmode.NewHeldDisk(real, pos)
			held.Attach(out)
			diskOut = held.Sink()
			return held
		})
	if err != nil {
		return err
	}
	defer devs.Close()
	if held != nil {
		held.SetPoll(devs.blkDev.Poll) // a held-back FLUSH completes
	}
	netSpec, _ := f.devices.resolve(f.machine.guest)
	cfg.Machine = describeMachine("checkpoint", kvmKind(f.machine.irqchip), f.machine.vcpus, netSpec, devs.disk)
	if err := m.LoadBareMetal(img, devs.boot); err != nil {
		return err
	}
	tracker, err := dirtylog.New(m, mode)
	if err != nil {
		return err
	}
	defer tracker.Close()
	primary, err = ckmode.NewPrimary(cfg, &ckmode.KVMGuest{M: m, Tracker: tracker}, out, fence, gen, slog.Default())
	if err != nil {
		return err
	}
	if held != nil {
		primary.SetDisk(held)
	}
	return runReplicated(ctx, f, primary, out, gen, kvmKind(f.machine.irqchip),
		func() error {
			if err := m.Start(); err != nil {
				return err
			}
			return devs.startNet()
		},
		func() error { return waitMachine(ctx, m) })
}

// waitMachine waits until the machine stops (nil if its guest powered off)
// or ctx ends; the caller's deferred Close then stops the guest.
func waitMachine(ctx context.Context, m *vmm.Machine) error {
	select {
	case <-m.Stopped():
		_, err := m.Wait()
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runReplicated is a checkpoint-mode primary's life once its guest and
// devices are built: it connects to the backup, starts the guest and its
// network (start), and replicates it until the end; having lost its backup
// and won the next generation, it runs on alone until wait returns.
func runReplicated(ctx context.Context, f *modeFlags, primary *ckmode.Primary, out *outbuf.Buffer, gen uint64, machine string, start, wait func() error) error {
	conn, err := dialBackup(ctx, f.peer, 10*time.Second)
	if err != nil {
		return err
	}
	if err := start(); err != nil {
		return err
	}
	slog.Info("primary running", "generation", gen, "backup", f.peer, "epoch", f.epoch, "machine", machine)
	stopStatus := printStatus(primary, out, f.status)
	defer stopStatus()
	err = primary.Run(ctx, conn)
	if errors.Is(err, ckmode.ErrBackupLost) {
		slog.Warn("running alone", "err", err)
		err = wait()
	}
	return err
}

// kvmKind names a KVM machine by how its interrupts are delivered (the
// machine state differs).
func kvmKind(irqchip bool) string {
	if irqchip {
		return "KVM with the in-kernel irqchip"
	}
	return "KVM"
}

// describeMachine is what the two sides of a pair must agree on besides
// memory, sent in their Hello: the mode, the kind of machine, the vCPUs
// and the devices (disk nil: none).
func describeMachine(mode, kind string, vcpus int, netSpec string, disk *vmm.FileDisk) string {
	d := fmt.Sprintf("%s mode on %s, %d vCPU", mode, kind, vcpus)
	if netSpec != "none" {
		d += ", network"
	}
	if disk != nil {
		d += fmt.Sprintf(", %d-byte disk", disk.Size())
	}
	return d
}

// diskFwd is the output buffer's disk: the held disk's sink, known once
// attached.
type diskFwd struct{ d *outbuf.Disk }

func (f diskFwd) ReadAt(p []byte, off int64) (int, error)  { return (*f.d).ReadAt(p, off) }
func (f diskFwd) WriteAt(p []byte, off int64) (int, error) { return (*f.d).WriteAt(p, off) }

func dialBackup(ctx context.Context, addr string, within time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to the peer at %s: %w", addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// printStatus prints the primary's status line every interval on stderr.
func printStatus(p *ckmode.Primary, out *outbuf.Buffer, every time.Duration) (stop func()) {
	return statusLines(every, func() string {
		st := out.Stats()
		delay := fmt.Sprintf("p50 %v p99 %v", st.Delay.Quantile(0.5), st.Delay.Quantile(0.99))
		return p.Stats.Line(time.Now(), delay)
	})
}

// statusLines prints line() on stderr every interval until stopped,
// unless it says the same as last time (an idle guest).
func statusLines(every time.Duration, line func() string) (stop func()) {
	if every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if l := line(); l != last {
					fmt.Fprintln(os.Stderr, l)
					last = l
				}
			}
		}
	}()
	return func() { close(done) }
}

// becomePrimary opens the arbiter and wins the generation after the
// current one for this process.
func becomePrimary(ctx context.Context, spec string) (witness.Arbiter, *witness.Fence, uint64, error) {
	arb, fence, err := openFence(spec, "primary")
	if err != nil {
		return nil, nil, 0, err
	}
	cur, err := arb.Current(ctx)
	if err != nil {
		arb.Close()
		return nil, nil, 0, fmt.Errorf("asking the witness who is primary: %w", err)
	}
	gen := cur.Generation + 1
	if _, err := fence.Acquire(ctx, gen); err != nil {
		arb.Close()
		return nil, nil, 0, fmt.Errorf("becoming primary (generation %d): %w", gen, err)
	}
	return arb, fence, gen, nil
}

// listenForPrimary opens a backup's listener and says where it listens:
// on stdout, or on the inherited --ready-fd of a local run.
func listenForPrimary(f *modeFlags, stdout io.Writer) (net.Listener, error) {
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return nil, err
	}
	ready := stdout
	if f.readyFD > 0 {
		rf := os.NewFile(uintptr(f.readyFD), "ready")
		defer rf.Close()
		ready = rf
	}
	fmt.Fprintln(ready, backupReadyPrefix+ln.Addr().String())
	return ln, nil
}

// runBackup keeps the primary's guest ready and goes live if the primary
// is lost and the witness agrees.
func runBackup(ctx context.Context, f *modeFlags, cfg ckmode.Config, stdout io.Writer) error {
	m, _, _, err := f.newMachine(stdout, false)
	if err != nil {
		return err
	}
	defer m.Close()
	arb, fence, err := openFence(f.arbiter, "backup")
	if err != nil {
		return err
	}
	defer arb.Close()
	// The devices exist (their state is replicated) but their backends
	// open only when this side goes live: the primary holds them now.
	netOut := &netTarget{}
	devs, err := f.devices.attachDeferred(m, f.machine.guest, netOut)
	if err != nil {
		return err
	}
	defer devs.Close()
	netSpec, _ := f.devices.resolve(f.machine.guest)
	cfg.Machine = describeMachine("checkpoint", kvmKind(f.machine.irqchip), f.machine.vcpus, netSpec, devs.disk)
	backup, err := ckmode.NewBackup(cfg, &ckmode.KVMGuest{M: m}, fence, slog.Default())
	if err != nil {
		return err
	}
	if devs.disk != nil {
		backup.SetDisk(devs.disk) // where going live writes again what the primary may not have
	}
	return followPrimaries(ctx, f, stdout, backup,
		func() error { return devs.goLive(ctx, f.devices, f.machine.guest, netOut) },
		func() error { return waitMachine(ctx, m) })
}

// followPrimaries is a checkpoint-mode backup's life: it accepts a primary,
// follows it until it is lost, and then, holding a committed epoch, goes
// live (the witness permitting): live opens the guest's backends, and wait
// returns when the guest stops. Without a committed epoch, or having lost
// the witness's contest, it waits for the next primary.
func followPrimaries(ctx context.Context, f *modeFlags, stdout io.Writer, backup *ckmode.Backup, live, wait func() error) error {
	ln, err := listenForPrimary(f, stdout)
	if err != nil {
		return err
	}
	defer ln.Close()
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		conn, err := ln.Accept()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return err
		}
		err = backup.Receive(ctx, conn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		st := backup.Status()
		slog.Warn("primary lost", "err", err, "committed", st.Epoch, "state", st.State)
		if st.State != format.StateCommitted {
			continue // nothing to go live with: wait for a primary
		}
		gen, err := backup.GoLive(ctx)
		if err != nil {
			if errors.Is(err, witness.ErrLost) {
				slog.Warn("another candidate won; staying backup", "err", err)
				continue
			}
			return err
		}
		if err := live(); err != nil {
			return err
		}
		slog.Warn("live as primary, unprotected", "generation", gen)
		return wait()
	}
}

// openFence opens the arbiter spec names and a fence on it owned by this
// process in role.
func openFence(spec, role string) (witness.Arbiter, *witness.Fence, error) {
	arb, err := witness.Open(spec)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	return arb, witness.NewFence(arb, fmt.Sprintf("%s-%s-%d", role, host, os.Getpid())), nil
}
