package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/guests"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/witness"
)

// Mode is the replication mode. The zero value is invalid.
type Mode int

const (
	modeInvalid Mode = iota
	// ModeReplay is record/replay: one vCPU, the backup re-executes the log.
	ModeReplay
	// ModeCheckpoint is epoch state transfer: any number of vCPUs.
	ModeCheckpoint
)

func (m Mode) String() string {
	switch m {
	case ModeReplay:
		return "replay"
	case ModeCheckpoint:
		return "checkpoint"
	}
	return fmt.Sprintf("invalid mode %d", int(m))
}

// ParseMode parses "replay" or "checkpoint".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "replay":
		return ModeReplay, nil
	case "checkpoint":
		return ModeCheckpoint, nil
	}
	return modeInvalid, fmt.Errorf("--mode %q: want checkpoint or replay", s)
}

// Role is a node's place in the pair. The zero value is invalid.
type Role int

const (
	roleInvalid Role = iota
	// RolePrimary runs the guest and releases its outputs.
	RolePrimary
	// RoleBackup keeps the copy and goes live if the primary is lost.
	RoleBackup
	// RoleAlone runs the guest unprotected, with no backup and no witness:
	// its outputs leave at once (the baseline every mode is compared with).
	RoleAlone
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleBackup:
		return "backup"
	case RoleAlone:
		return "alone"
	}
	return fmt.Sprintf("invalid role %d", int(r))
}

// ParseRole parses "primary" or "backup".
func ParseRole(s string) (Role, error) {
	switch s {
	case "primary":
		return RolePrimary, nil
	case "backup":
		return RoleBackup, nil
	}
	return roleInvalid, fmt.Errorf("--role %q: want primary, backup, or nothing to run both here", s)
}

// Machine is the kind of machine the guest runs on. The zero value is
// invalid.
type Machine int

const (
	machineInvalid Machine = iota
	// MachineKVM is a machine on /dev/kvm (package vmm).
	MachineKVM
	// MachineSim is the software machine (package vmm/sim): one vCPU, its
	// own instruction set and guests, no KVM needed.
	MachineSim
)

func (m Machine) String() string {
	switch m {
	case MachineKVM:
		return "KVM"
	case MachineSim:
		return "the software machine"
	}
	return fmt.Sprintf("invalid machine %d", int(m))
}

// ParseMachine parses "kvm", "sim" or "auto" (KVM if /dev/kvm opens here).
func ParseMachine(s string) (Machine, error) {
	switch s {
	case "kvm":
		return MachineKVM, nil
	case "sim":
		return MachineSim, nil
	case "auto":
		if vmm.Available() {
			return MachineKVM, nil
		}
		return MachineSim, nil
	}
	return machineInvalid, fmt.Errorf("--machine %q: want kvm, sim or auto", s)
}

// DiskMode says where the guest's disk lives. The zero value is invalid.
type DiskMode int

const (
	diskModeInvalid DiskMode = iota
	// DiskShared is one image both hosts open (a SAN, NFS, or one host's
	// file for a local run): a backup going live writes again the writes
	// the primary may not have made durable.
	DiskShared
	// DiskMirrored is an image per host: the backup's receives the guest's
	// writes with each checkpoint (or log) it acknowledges, and a full sync
	// copies the primary's to it.
	DiskMirrored
)

func (m DiskMode) String() string {
	switch m {
	case DiskShared:
		return "shared"
	case DiskMirrored:
		return "mirrored"
	}
	return fmt.Sprintf("invalid disk mode %d", int(m))
}

// ParseDiskMode parses "shared" or "mirrored".
func ParseDiskMode(s string) (DiskMode, error) {
	switch s {
	case "shared":
		return DiskShared, nil
	case "mirrored":
		return DiskMirrored, nil
	}
	return diskModeInvalid, fmt.Errorf("--disk-mode %q: want shared or mirrored", s)
}

// Options describe one node. Start from DefaultOptions; Validate says what
// is wrong. Every field maps to one ftckpt flag of the same name.
type Options struct {
	Mode    Mode
	Role    Role
	Machine Machine

	// Guest is the bundled guest (guests.Names, or sim.Guests on the
	// software machine) and Params its parameters.
	Guest  string
	Params map[string]string
	// VCPUs, IRQChip and Tracking apply to KVM in checkpoint mode; replay
	// mode's KVM machine has one vCPU and userspace interrupts.
	VCPUs    int
	IRQChip  bool
	Tracking dirtylog.Mode
	// Memory is the guest RAM in bytes.
	Memory int64

	// Net is the network backend: "udp:ADDR" (a UDP front, no root
	// needed), "tap:NAME", or "none". OpenNet, if set, opens the backend
	// instead (ftckpt bench's client, tests); the guest then has a network
	// whatever Net says. Disk is the disk image (created at DiskSize if
	// missing), "" for none; DiskMode says whether both hosts open the same
	// one or each its own (then locked by this node while it runs).
	Net      string
	OpenNet  func() (vmm.NetBackend, error)
	Disk     string
	DiskSize int64
	DiskMode DiskMode

	// Peer is the backup's address (a primary). Listen is where a backup
	// accepts its primary; Join dials a running primary's AcceptBackups
	// address instead (in checkpoint mode, again until one takes it).
	// AcceptBackups is where a primary, or a backup once live, takes
	// backups that join while its guest runs unprotected.
	Peer, Listen, Join, AcceptBackups string
	// Rejoin, if set, is where the peer accepts backups once it is the
	// primary (its AcceptBackups): after handing the guest over to it
	// (ftckpt ctl failover) this node joins it there as its backup
	// (--rejoin), instead of stopping.
	Rejoin string
	// HandOverOnStop: a checkpoint primary whose run is asked to end (Start's
	// ctx ends: SIGTERM) with a backup in sync hands its guest over to it
	// first, as ftckpt ctl failover does, and ends with ErrHandedOver; see
	// Node.stopAsked. For a backup on another host: ftckpt sets it for a
	// --role process without --respawn. Left unset, the node just stops,
	// as a crash would stop it; so does a replay primary either way, its
	// stop handing over by itself.
	HandOverOnStop bool
	// Respawn, if set, starts a backup that joins this node at addr (its
	// AcceptBackups listener's) each time the guest runs unprotected,
	// unless the last one it started still runs (--respawn, a local run's
	// re-protection); the node stops that one when it ends.
	Respawn func(addr string) (Backup, error)
	// Arbiter names the witness (witness.Open): raft://..., disk:PATH.
	Arbiter string
	// TLS is this host's certificate, its cluster's CA and the peer names
	// it accepts (--tls-cert, --tls-key, --tls-ca, --peer-name; mtls.Load):
	// every connection to the peer, and to a raft witness, is mutual TLS
	// 1.3. nil is plain TCP (--insecure), logged at WARN.
	TLS *mtls.Identity

	// Checkpoint and Replay tune each mode's engine.
	Checkpoint ckmode.Config
	Replay     replay.Config

	// Console receives the guest's serial output; nil drops it.
	Console io.Writer
	// Ready, if set, is told the address a backup listens on, once it does.
	Ready func(addr string)
	// StatusEvery is how often a status line goes to Status (0: never).
	StatusEvery time.Duration
	Status      io.Writer
	// Log receives the node's events; nil is slog.Default().
	Log *slog.Logger

	// Metrics is where the node serves its metrics over HTTP (--metrics),
	// "" for nowhere; Control is its control socket (--control), "" for
	// none.
	Metrics, Control string
	// ops is the node's operator surface (control.go), set by Start.
	ops *ops
	// held, set by Run for the node after one that handed its guest over
	// to rejoin, is that node's machine, for its memory (rejoin.go).
	held *heldMemory
}

// DefaultOptions are a checkpoint-mode node of the kv guest on KVM with the
// defaults of every engine.
func DefaultOptions() Options {
	return Options{
		Mode: ModeCheckpoint, Machine: MachineKVM, Guest: "kv", VCPUs: 1, IRQChip: true,
		Tracking: dirtylog.ModeAuto, Memory: 64 << 20, Net: "none", DiskSize: 64 << 20, DiskMode: DiskShared,
		Arbiter: witness.DefaultSpec, Checkpoint: ckmode.DefaultConfig(), Replay: replay.DefaultConfig(),
		StatusEvery: time.Second,
	}
}

// DefaultDevices are the devices a bundled guest gets unless told
// otherwise: the kv guest a UDP front on 127.0.0.1:7777 (and, on the
// software machine, whose kv keeps its table on disk, ftckpt-disk.img); the
// disk guest ftckpt-disk.img.
func DefaultDevices(machine Machine, guest string) (net, disk string) {
	net = "none"
	if guest == "kv" {
		net = "udp:127.0.0.1:7777"
	}
	if guest == "disk" || guest == "kv" && machine == MachineSim {
		disk = "ftckpt-disk.img"
	}
	return net, disk
}

// Validate says what is wrong with o, or nil. It checks everything that
// can be checked before a machine is built.
func (o *Options) Validate() error {
	switch o.Mode {
	case ModeReplay, ModeCheckpoint:
	default:
		return errors.New("no mode: want checkpoint or replay")
	}
	if err := o.validateRole(); err != nil {
		return err
	}
	if err := o.validateMachine(); err != nil {
		return err
	}
	if kind, _, _ := strings.Cut(o.Net, ":"); o.OpenNet == nil && o.Net != "none" && (kind != "udp" && kind != "tap" ||
		o.Machine == MachineSim && kind != "udp") {
		want := "udp:ADDR, tap:NAME or none"
		if o.Machine == MachineSim {
			want = "udp:ADDR or none (the software machine's network)"
		}
		return fmt.Errorf("--net %q: want %s", o.Net, want)
	}
	if o.Disk != "" && (o.DiskSize <= 0 || o.DiskSize%512 != 0) {
		return fmt.Errorf("--disk-size %d: want a positive multiple of 512 bytes", o.DiskSize)
	}
	if o.DiskMode != DiskShared && o.DiskMode != DiskMirrored {
		return errors.New("no disk mode: want shared or mirrored")
	}
	if o.Mode == ModeReplay {
		return o.Replay.Validate()
	}
	return o.Checkpoint.Validate()
}

func (o *Options) validateRole() error {
	switch {
	case o.Role == RoleAlone:
		return nil
	case o.Role != RolePrimary && o.Role != RoleBackup:
		return errors.New("no role: want primary, backup or alone")
	case o.Role == RolePrimary && o.Peer == "" && o.AcceptBackups == "":
		return errors.New("--role primary needs --peer HOST:PORT (the backup), or --accept-backups ADDR")
	case o.Role == RoleBackup && (o.Listen == "") == (o.Join == ""):
		return errors.New("--role backup needs --listen ADDR, or --join HOST:PORT (one of them)")
	case o.Respawn != nil && o.AcceptBackups == "":
		return errors.New("--respawn needs --accept-backups ADDR, where the backups it starts join")
	case o.Rejoin != "" && o.AcceptBackups == "":
		return errors.New("--rejoin needs --accept-backups ADDR: the node it hands over to joins it there in turn")
	}
	return nil
}

func (o *Options) validateMachine() error {
	switch o.Machine {
	case MachineSim:
		if !slices.Contains(sim.Guests(), o.Guest) {
			return fmt.Errorf("--guest %q: the software machine runs %s", o.Guest, strings.Join(sim.Guests(), ", "))
		}
		if o.VCPUs != 1 {
			return fmt.Errorf("%d vCPUs: the software machine has one", o.VCPUs)
		}
		_, err := sim.ParseParams(o.Params)
		return err
	case MachineKVM:
		if _, err := guests.Image(o.Guest); err != nil {
			return err
		}
		if o.Mode == ModeReplay && o.VCPUs != 1 {
			return fmt.Errorf("%d vCPUs: replay mode runs one", o.VCPUs)
		}
		cfg := o.kvmConfig()
		return cfg.Validate()
	}
	return errors.New("no machine: want KVM or the software machine")
}

// kvmConfig is the KVM machine of a checkpoint-mode node (replay mode's is
// replayKVMConfig).
func (o *Options) kvmConfig() vmm.Config {
	return vmm.Config{VCPUs: o.VCPUs, MemSize: o.Memory, IRQChip: o.IRQChip, Params: o.Params, Console: o.Console}
}

// hasNet says whether the guest's network reaches the host.
func (o *Options) hasNet() bool { return o.OpenNet != nil || o.Net != "none" }

// hasNetDevice says whether the guest has a network device: wherever its
// network reaches the host, and always on the software machine, whose
// device is built in (with no network, what it sends is lost: unplugged).
func (o *Options) hasNetDevice() bool { return o.hasNet() || o.Machine == MachineSim }

func (o *Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.Default()
	}
	return o.Log
}

// describe is what the two sides of a pair must agree on besides memory,
// sent in their Hello: the mode, the kind of machine, the vCPUs and the
// devices.
func (o *Options) describe(diskSize int64) string {
	kind := o.Machine.String()
	if o.Machine == MachineKVM && o.Mode == ModeCheckpoint && o.IRQChip {
		kind = "KVM with the in-kernel irqchip"
	}
	d := fmt.Sprintf("%s mode on %s, %d vCPU", o.Mode, kind, o.VCPUs)
	if o.hasNet() {
		d += ", network"
	}
	if diskSize > 0 {
		d += fmt.Sprintf(", %d-byte %s disk", diskSize, o.DiskMode)
	}
	return d
}
