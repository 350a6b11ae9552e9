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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/ftckpt/ftckpt/dirtylog"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/witness"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// modeFlags are the root command's flags: ftckpt --mode checkpoint ...
// They become node.Options; node builds and runs the node.
type modeFlags struct {
	mode            string
	role            string
	peer            string
	listen          string
	epoch           string
	minEpoch        time.Duration
	maxEpoch        time.Duration
	arbiter         string
	verify          bool
	heartbeat       time.Duration
	failureTimeout  time.Duration
	dirtyTracking   string
	status          time.Duration
	readyFD         int
	machineKind     string
	landingDelay    time.Duration
	join            string
	acceptBackups   string
	rejoin          string
	precopyRounds   int
	copyAfterResume string
	metrics         string
	control         string
	respawn         bool
	machine         machineFlags
	devices         deviceFlags
	tls             tlsFlags
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
	fl.IntVar(&f.precopyRounds, "precopy-rounds", ckmode.DefaultConfig().PrecopyRounds, "checkpoint mode: most rounds of a full sync while the guest runs before the final pause; 0 copies all of memory (and a mirrored disk) with the guest paused (stop-and-copy)")
	fl.StringVar(&f.copyAfterResume, "copy-after-resume", ckmode.DefaultConfig().CopyAfterResume.String(), "checkpoint mode on KVM: write-protect an epoch's dirty pages and resume the guest before they are copied, each before its next write (userfaultfd), for epochs of a few hundred pages or more in long runs — auto: whenever the pauses measure it cheaper than copying them; always; never: every pause copies them")
	fl.DurationVar(&f.maxEpoch, "max-epoch", 500*time.Millisecond, "longest epoch for --epoch auto")
	fl.StringVar(&f.arbiter, "arbiter", witness.DefaultSpec, "who decides failover: raft://H:P,H:P,H:P or disk:PATH[#OFFSET]")
	fl.BoolVar(&f.verify, "verify", false, "send a memory hash with every checkpoint (replay: every full checkpoint); the backup checks it")
	fl.DurationVar(&f.heartbeat, "heartbeat", 50*time.Millisecond, "heartbeat interval")
	fl.DurationVar(&f.failureTimeout, "failure-timeout", 500*time.Millisecond, "silence that means the peer is gone")
	fl.StringVar(&f.dirtyTracking, "dirty-tracking", "auto", "how KVM reports the pages vCPUs write: bitmap, ring, or auto (the ring from 4 GiB of guest memory, except on kvm-pvm, whose rings overflow under heavy writing)")
	fl.DurationVar(&f.status, "status-every", time.Second, "how often the primary prints its status line (0: never)")
	fl.IntVar(&f.readyFD, "ready-fd", 0, "backup: write the listening address to this inherited fd (for a local run)")
	fl.MarkHidden("ready-fd")
	fl.StringVar(&f.machineKind, "machine", "auto", "the guest's machine: kvm, sim (the software machine: one vCPU, its own guests) or auto (kvm if /dev/kvm opens)")
	fl.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. :9100); empty: off")
	fl.StringVar(&f.control, "control", "", "control socket for ftckpt ctl (default ROLE-PID.sock in "+node.ControlDir()+"); none: no socket")
	fl.StringVar(&f.join, "join", "", "backup: join the running primary at HOST:PORT (its --accept-backups) instead of listening; checkpoint mode tries again until a primary takes it")
	fl.StringVar(&f.acceptBackups, "accept-backups", "", "primary (and a backup once live): accept backups that --join at ADDR whenever the guest runs unprotected, one at a time")
	fl.StringVar(&f.rejoin, "rejoin", "", "after handing the guest over to the peer (ftckpt ctl failover), join it at HOST:PORT (its --accept-backups) as its backup instead of stopping; give each host the other's, and the pair can swap back and forth")
	fl.BoolVar(&f.respawn, "respawn", true, "start a backup that joins this node whenever the guest runs unprotected, after every failover (a local run; with --role, needs --accept-backups and is off unless given)")
	fl.DurationVar(&f.landingDelay, "landing-delay", replay.DefaultConfig().LandingDelay, "replay: how long a due interrupt waits for a synchronous exit before the guest is kicked")
	f.machine.add(root, "kv")
	f.devices.add(root)
	f.devices.addMode(root)
	f.tls.add(root)
	root.RunE = func(cmd *cobra.Command, _ []string) error {
		if f.mode == "" {
			return cmd.Help()
		}
		o, err := f.options(cmd.Flags().Changed, cmd.OutOrStdout())
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
		defer stop()
		// The first signal asks the node to stop (a primary hands its
		// guest over first, up to 10 s); a second one kills the process.
		context.AfterFunc(ctx, stop)
		if f.machineKind == "auto" {
			slog.Info(o.Mode.String()+" machine", "machine", describeMachineChoice(o.Machine))
		}
		if f.role == "" {
			var backupArgs []string
			var done func()
			if o.TLS, backupArgs, done, err = f.localTLS(); err != nil {
				return err
			}
			backupArgs = append(backupArgs, localBackupDisk(o)...)
			defer func() {
				if !errors.Is(err, node.ErrHandedOver) { // else the nodes going on need the certificates
					done()
				}
			}()
			if o.Respawn != nil {
				// Respawned backups take the default control socket and no
				// metrics (pairFlags): there may be two at once.
				err = runLocalRespawning(ctx, o, backupArgs)
			} else {
				if backupArgs, err = f.localOps(backupArgs); err != nil {
					return err
				}
				err = node.RunLocal(ctx, o, func() (node.Backup, error) {
					b, err := startLocalBackup(backupArgs)
					done() // the backup has read its certificate, or failed
					return b, err
				})
			}
		} else {
			err = node.Run(ctx, o)
		}
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			slog.Info("stopped by a signal")
			return nil
		}
		if errors.Is(err, node.ErrHandedOver) {
			slog.Info("handed over to the backup; stopping")
			return nil
		}
		return err
	}
}

// describeMachineChoice says which machine --machine auto chose, and why.
func describeMachineChoice(m node.Machine) string {
	if m == node.MachineSim {
		return "the software machine (vmm/sim): /dev/kvm cannot be opened here"
	}
	return m.String()
}

// options checks the flags and turns them into the node's options.
// changed says whether a flag was set on the command line.
func (f *modeFlags) options(changed func(string) bool, stdout io.Writer) (node.Options, error) {
	o := node.DefaultOptions()
	var err error
	if o.Mode, err = node.ParseMode(f.mode); err != nil {
		return o, err
	}
	if f.role != "" {
		if o.Role, err = node.ParseRole(f.role); err != nil {
			return o, err
		}
	} else if f.join != "" || f.acceptBackups != "" || f.rejoin != "" {
		return o, errors.New("--join, --accept-backups and --rejoin need --role (a local run makes its own backups)")
	}
	if err := f.devices.validate(); err != nil {
		return o, err
	}
	if o.Machine, err = node.ParseMachine(f.machineKind); err != nil {
		return o, err
	}
	if err := f.checkFlagsApply(o, changed); err != nil {
		return o, err
	}
	o.Guest, o.VCPUs, o.IRQChip = f.machine.guest, f.machine.vcpus, f.machine.irqchip
	if o.Memory, err = parseSize(f.machine.memory); err != nil {
		return o, fmt.Errorf("--memory: %w", err)
	}
	if o.Params, err = parseParams(f.machine.params); err != nil {
		return o, err
	}
	if o.Tracking, err = dirtylog.ParseMode(f.dirtyTracking); err != nil {
		return o, fmt.Errorf("--dirty-tracking: %w", err)
	}
	if o.Net, o.Disk, o.DiskSize, err = f.devices.resolve(o.Machine, o.Guest); err != nil {
		return o, err
	}
	if o.DiskMode, err = f.devices.resolveMode(f.role); err != nil {
		return o, err
	}
	o.Peer, o.Listen, o.Join, o.AcceptBackups, o.Rejoin, o.Arbiter = f.peer, f.listen, f.join, f.acceptBackups, f.rejoin, f.arbiter
	o.Replay.Heartbeat, o.Replay.FailureTimeout, o.Replay.LandingDelay, o.Replay.Verify = f.heartbeat, f.failureTimeout, f.landingDelay, f.verify
	c := &o.Checkpoint
	c.Heartbeat, c.FailureTimeout, c.Verify, c.MinEpoch, c.MaxEpoch = f.heartbeat, f.failureTimeout, f.verify, f.minEpoch, f.maxEpoch
	c.PrecopyRounds = f.precopyRounds
	if c.CopyAfterResume, err = ckmode.ParseCopyMode(f.copyAfterResume); err != nil {
		return o, fmt.Errorf("--copy-after-resume %w", err)
	}
	if f.epoch == "auto" {
		c.EpochAuto, c.Epoch = true, max(f.minEpoch, min(f.maxEpoch, c.Epoch))
	} else if c.Epoch, err = time.ParseDuration(f.epoch); err != nil {
		return o, fmt.Errorf("--epoch %q: want a duration such as 25ms, or auto", f.epoch)
	}
	if f.respawn && (f.role == "" || changed("respawn")) {
		o.Respawn = spawnJoiningBackup(localBackupDisk(o)) // a local run's also gives it its certificates
	}
	// A backup on another host goes on after this process: stopped, a
	// checkpoint primary hands it the guest first. A local run's backups
	// stop with it.
	o.HandOverOnStop = f.role != "" && o.Respawn == nil
	o.Console, o.Status, o.StatusEvery = stdout, os.Stderr, f.status
	o.Metrics, o.Control = f.metrics, f.controlPath(o.Role)
	if f.readyFD > 0 {
		o.Ready = func(addr string) {
			rf := os.NewFile(uintptr(f.readyFD), "ready")
			fmt.Fprintln(rf, backupReadyPrefix+addr)
			rf.Close()
		}
	} else {
		o.Ready = func(addr string) { fmt.Fprintln(stdout, backupReadyPrefix+addr) }
	}
	if f.role == "" {
		return o, nil // RunLocal validates, as the primary; RunE gives it TLS
	}
	if err := o.Validate(); err != nil {
		return o, err
	}
	o.TLS, err = f.tls.identity("the link between primary and backup, and the raft witness")
	return o, err
}

// localTLS is the TLS of a local run: the flags' if given (or --insecure);
// else throwaway certificates, made for this run in a private temporary
// directory, so that a local run is secure too. It returns the primary's
// identity, the flags that give the backup its own, and done, which
// removes the directory (once the backup has read it; idempotent).
func (f *modeFlags) localTLS() (*mtls.Identity, []string, func(), error) {
	nothing := func() {}
	if f.tls.given() || f.tls.insecure {
		id, err := f.tls.identity("the local pair's link and the raft witness")
		return id, nil, nothing, err // the backup inherits the flags
	}
	dir, err := os.MkdirTemp("", "ftckpt-local-tls-")
	if err != nil {
		return nil, nil, nothing, err
	}
	files, id, err := mtls.Throwaway(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nothing, fmt.Errorf("making the local run's certificates: %w", err)
	}
	slog.Info("local run: mutual TLS with certificates made for this run", "dir", dir)
	var once sync.Once
	done := func() { once.Do(func() { os.RemoveAll(dir) }) }
	return id, []string{"--tls-cert", files.Cert, "--tls-key", files.Key, "--tls-ca", files.CA}, done, nil
}

// checkFlagsApply refuses flags that do not apply to the mode or machine
// chosen, naming them.
func (f *modeFlags) checkFlagsApply(o node.Options, changed func(string) bool) error {
	if o.Mode == node.ModeReplay {
		for _, name := range []string{"epoch", "min-epoch", "max-epoch", "dirty-tracking", "vcpus", "irqchip"} {
			if changed(name) {
				return fmt.Errorf("--%s does not apply to --mode replay (one vCPU, userspace interrupts, no epochs)", name)
			}
		}
		if changed("precopy-rounds") {
			return errors.New("--precopy-rounds applies to --mode checkpoint (replay pre-copies only to a backup that joins a running guest)")
		}
		if changed("copy-after-resume") {
			return errors.New("--copy-after-resume applies to --mode checkpoint (replay copies no pages at its epochs)")
		}
		return nil
	}
	if changed("landing-delay") {
		return errors.New("--landing-delay applies to --mode replay")
	}
	if o.Machine == node.MachineSim {
		why := ""
		if f.machineKind == "auto" {
			why = ", chosen because /dev/kvm cannot be opened here"
		}
		for _, name := range []string{"vcpus", "irqchip", "dirty-tracking", "copy-after-resume"} {
			if changed(name) {
				return fmt.Errorf("--%s does not apply to the software machine (one vCPU, its own interrupts and dirty tracking%s)", name, why)
			}
		}
	}
	return nil
}

// startLocalBackup starts this program again as the backup of a local run:
// a child process on loopback, sharing the terminal, with the same flags
// and extra; it reports where it listens on an inherited pipe (--ready-fd).
func startLocalBackup(extra []string) (node.Backup, error) {
	self, err := os.Executable()
	if err != nil {
		return node.Backup{}, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return node.Backup{}, err
	}
	defer r.Close()
	args := append(append([]string{"--role", "backup", "--listen", "127.0.0.1:0", "--ready-fd", "3"}, os.Args[1:]...), extra...)
	child := exec.Command(self, args...)
	child.Stdout, child.Stderr, child.ExtraFiles = os.Stdout, os.Stderr, []*os.File{w}
	if err := child.Start(); err != nil {
		w.Close()
		return node.Backup{}, fmt.Errorf("starting the backup process: %w", err)
	}
	w.Close()
	exited := make(chan struct{})
	go func() { child.Wait(); close(exited) }()
	line, err := bufio.NewReader(r).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), backupReadyPrefix)
	if !ok {
		<-exited
		return node.Backup{}, fmt.Errorf("the backup process ended before listening (%v)", err)
	}
	slog.Info("backup process is listening", "pid", child.Process.Pid, "addr", addr)
	return node.Backup{Addr: addr, Exited: exited, Stop: stopper(child, exited)}, nil
}

// stopper is how a backup process started here is stopped: SIGTERM, then,
// if it has not ended (exited closed) within grace, SIGKILL.
func stopper(child *exec.Cmd, exited <-chan struct{}) func(grace time.Duration) {
	return func(grace time.Duration) {
		child.Process.Signal(unix.SIGTERM)
		select {
		case <-exited:
		case <-time.After(grace):
			slog.Warn("the backup process did not end; killing it", "pid", child.Process.Pid, "after", grace)
			child.Process.Kill()
			<-exited
		}
	}
}

// controlPath is the control socket of a node in role: --control, the
// default for the role (a local run's is its primary's), or none.
func (f *modeFlags) controlPath(role node.Role) string {
	switch f.control {
	case "none":
		return ""
	case "":
		if role != node.RoleBackup {
			role = node.RolePrimary
		}
		return node.DefaultControlPath(role)
	}
	return f.control
}

// localOps adds to the local backup's flags (a local run without
// --respawn) a control socket and a metrics address of its own when the
// primary's were given: PATH.backup, and the port after the primary's.
func (f *modeFlags) localOps(args []string) ([]string, error) {
	if f.control != "" && f.control != "none" {
		args = append(args, "--control", f.control+".backup")
	}
	if f.metrics != "" {
		host, port, err := net.SplitHostPort(f.metrics)
		if err != nil {
			return nil, fmt.Errorf("--metrics %q: want HOST:PORT: %w", f.metrics, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("--metrics %q: want a numeric port", f.metrics)
		}
		if p != 0 {
			p++
		}
		args = append(args, "--metrics", net.JoinHostPort(host, strconv.Itoa(p)))
	}
	return args, nil
}
