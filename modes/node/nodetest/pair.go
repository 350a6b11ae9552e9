// Package nodetest runs a primary and a backup node (modes/node) in this
// process, for tests: the nodes are built the way the CLI and ftckpt bench
// build them (node.Start), on loopback, with a disk-lease witness and a
// disk image in the test's directory, the guest's network on a free UDP
// port (its client is the test's, KVClient for the kv guest), and the link
// between them through a checkpoint/linktest proxy, so that the test cuts
// or silences it. A Pair waits on the nodes' states and log events, never
// for a while; it crashes or stops the primary.
//
// The engine-level tests of each mode keep harnesses of their own where
// they need what a node does not expose (a scripted machine, a fake guest,
// the engines' insides); everything a node can do is tested here.
package nodetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// Options are the options of a test pair's nodes (the primary's; Start
// sets each node's role, addresses, console and log) running guest on
// machine in mode, with the guest's default devices (node.DefaultDevices):
// its network on a free loopback UDP port, its disk an image in the test's
// directory. The failure timeouts are long: a test cuts or silences the
// link when it means to (a peer found silent on a loaded host would
// otherwise fail a test of something else). Change what the test needs
// before Start.
func Options(t testing.TB, mode node.Mode, machine node.Machine, guest string) node.Options {
	t.Helper()
	o := node.DefaultOptions()
	o.Mode, o.Machine, o.Guest, o.VCPUs = mode, machine, guest, 1
	o.Memory = 16 << 20
	if machine == node.MachineSim {
		o.Memory = 1 << 20
	}
	dir := t.TempDir()
	o.Net, o.Disk = node.DefaultDevices(machine, guest)
	if o.Net != "none" {
		o.Net = "udp:" + FreeUDP(t)
	}
	if o.Disk != "" {
		o.Disk, o.DiskSize = filepath.Join(dir, "disk.img"), 1<<20
	}
	o.Arbiter = "disk:" + filepath.Join(dir, "lease")
	o.Checkpoint.Epoch = 5 * time.Millisecond
	o.Checkpoint.Heartbeat, o.Checkpoint.FailureTimeout = 20*time.Millisecond, 10*time.Second
	o.Replay.Heartbeat, o.Replay.FailureTimeout = 100*time.Millisecond, 10*time.Second
	o.StatusEvery = 0
	return o
}

// FreeUDP returns a loopback address whose UDP port is free now, taken
// below the kernel's ephemeral range (32768 and up), so that the client
// sockets of other tests do not take it before a node binds it.
func FreeUDP(t testing.TB) string {
	t.Helper()
	for range 1000 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.Intn(12000))
		if c, err := net.ListenPacket("udp4", addr); err == nil {
			c.Close()
			return addr
		}
	}
	t.Fatal("no free UDP port")
	return ""
}

// Pair is a primary node and a backup node of one guest in this process.
type Pair struct {
	t testing.TB
	// Options are the primary's.
	Options node.Options
	// Link is the path between them: the primary dials the backup through
	// its proxy.
	Link *linktest.Link
	// Primary and Backup are the nodes.
	Primary, Backup *node.Node
	// Log has both nodes' records, as "primary" and "backup".
	Log *Log
	// PrimaryConsole and BackupConsole are their guests' consoles.
	PrimaryConsole, BackupConsole *vmmtest.Console

	arb              witness.Arbiter
	cancelP, cancelB context.CancelFunc
}

// Start starts a backup node with o's options, then a primary node that
// connects to it through a new link; they are stopped when the test ends
// (and their log printed, if it failed).
// With o.Control set, the primary's control socket is o.Control and the
// backup's o.Control+".backup"; with o.Metrics set (127.0.0.1:0), each
// serves its metrics on a port of its own (node.Node.MetricsAddr).
func Start(t testing.TB, o node.Options) *Pair {
	t.Helper()
	return StartOn(t, o, linktest.New())
}

// StartOn is Start with the nodes' link through link, whose filters the
// test has set (they apply to connections made from then on).
func StartOn(t testing.TB, o node.Options, link *linktest.Link) *Pair {
	t.Helper()
	p := &Pair{t: t, Link: link, Log: &Log{},
		PrimaryConsole: &vmmtest.Console{}, BackupConsole: &vmmtest.Console{}}
	arb, err := witness.Open(o.Arbiter)
	if err != nil {
		t.Fatal(err)
	}
	p.arb = arb
	// Cleanups run last first: the log is shown after the nodes ended, or
	// failed to (Closed ends its cleanup then).
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the nodes' log:\n%s", p.Log)
			t.Logf("the primary's guest console, its end:\n%s\nthe backup's:\n%s", lastLines(p.PrimaryConsole.String(), consoleTail), lastLines(p.BackupConsole.String(), consoleTail))
		}
	})
	t.Cleanup(func() {
		p.cancelP()
		p.cancelB()
		p.Link.Cut()
		for _, n := range []*node.Node{p.Primary, p.Backup} {
			if n != nil {
				vmmtest.Closed(t, "a node to end at the test's end", n.Done())
			}
		}
		arb.Close()
	})
	p.cancelP, p.cancelB = func() {}, func() {}

	b := o
	b.Role, b.Listen, b.Peer = node.RoleBackup, "127.0.0.1:0", ""
	if o.Control != "" {
		b.Control = o.Control + ".backup" // the primary's is o.Control
	}
	b.Console, b.Log = p.BackupConsole, p.Log.Logger("backup")
	listening := make(chan string, 1)
	b.Ready = func(addr string) { listening <- addr }
	ctx, cancel := context.WithCancel(context.Background())
	p.cancelB = cancel
	if p.Backup, err = node.Start(ctx, b); err != nil {
		t.Fatal(err)
	}
	var addr string
	select {
	case addr = <-listening:
	case <-p.Backup.Done():
		t.Fatalf("the backup ended before it listened: %v", p.Backup.Wait())
	case <-time.After(vmmtest.Bound):
		t.Fatal("the backup never listened")
	}

	o.Role, o.Listen, o.Peer = node.RolePrimary, "", p.Link.Proxy(t, addr)
	o.Console, o.Log, o.Ready = p.PrimaryConsole, p.Log.Logger("primary"), nil
	p.Options = o
	ctx, cancel = context.WithCancel(context.Background())
	p.cancelP = cancel
	if p.Primary, err = node.Start(ctx, o); err != nil {
		t.Fatal(err)
	}
	return p
}

// Addr is the guest's network address ("" without one): the primary's,
// and the backup's once it is live.
func (p *Pair) Addr() string {
	addr, _ := strings.CutPrefix(p.Options.Net, "udp:")
	if addr == p.Options.Net {
		return ""
	}
	return addr
}

// InSync says whether the backup holds the primary's guest: a committed
// epoch (checkpoint mode), an applied checkpoint (replay mode).
func (p *Pair) InSync() bool {
	bp := p.Backup.Parts()
	switch {
	case bp.CheckpointBackup != nil:
		return bp.CheckpointBackup.Status().State == format.StateCommitted
	case bp.ReplayBackup != nil:
		return bp.ReplayBackup.Stats.Applied.Load() > 0
	}
	return false
}

// WaitInSync waits until the backup is in sync (InSync); it fails the test
// if a node ends first.
func (p *Pair) WaitInSync() {
	p.t.Helper()
	vmmtest.WaitUntil(p.t, "the backup in sync", func() bool {
		p.running(p.Primary, "primary")
		p.running(p.Backup, "backup")
		return p.InSync()
	})
}

// IsLive says whether the backup went live.
func (p *Pair) IsLive() bool { return p.Log.Has("backup", liveEvent) }

// liveEvent is what a node logs once it went live from backup.
const liveEvent = "live as primary, unprotected"

// WaitLive waits until the backup went live; it fails the test if the
// backup ends first.
func (p *Pair) WaitLive() {
	p.t.Helper()
	vmmtest.WaitUntil(p.t, "the backup to go live", func() bool {
		if p.IsLive() {
			return true
		}
		p.running(p.Backup, "backup")
		return false
	})
}

// running fails the test if n ended.
func (p *Pair) running(n *node.Node, name string) {
	p.t.Helper()
	select {
	case <-n.Done():
		p.t.Fatalf("the %s ended: %v", name, n.Wait())
	default:
	}
}

// CrashPrimary ends the primary as its host's death would: from now on
// nothing it sends reaches the backup (the link goes dark), its engine
// stops (first, so that it does not contest the witness over the link's
// failure), and its link is cut. Its guest, its network and its disk close
// as the node ends; it returns once it has.
func (p *Pair) CrashPrimary() {
	p.t.Helper()
	p.Link.Partition()
	p.cancelP()
	p.Link.Cut()
	vmmtest.Closed(p.t, "the crashed primary to end", p.Primary.Done())
}

// StopPrimary ends the primary as its stop would (SIGTERM): in replay mode
// it ships the whole log first, which the backup replays before it goes
// live; in checkpoint mode, given Options.HandOverOnStop and its backup in
// sync, it hands the guest over first (node.ErrHandedOver). It returns
// what the primary's node returned.
func (p *Pair) StopPrimary() error {
	p.t.Helper()
	p.cancelP()
	vmmtest.Closed(p.t, "the stopped primary to end", p.Primary.Done())
	return p.Primary.Wait()
}

// StopBackup ends the backup node (its host dies: its link is cut).
func (p *Pair) StopBackup() {
	p.t.Helper()
	p.cancelB()
	p.Link.Cut()
	vmmtest.Closed(p.t, "the stopped backup to end", p.Backup.Done())
}

// Holder is who holds the witness's current generation, and which:
// "primary" or "backup" (the node whose fence claimed it), or "".
func (p *Pair) Holder() (string, uint64) {
	p.t.Helper()
	c, err := p.arb.Current(context.Background())
	if err != nil {
		p.t.Fatal(err)
	}
	for _, role := range []string{"primary", "backup"} {
		if strings.HasPrefix(c.Owner, role+"-") { // node's fences are ROLE-HOST-PID
			return role, c.Generation
		}
	}
	return "", c.Generation
}

// IsHalt says whether err is a node's halt: a primary that lost its backup
// and the witness's contest.
func IsHalt(err error) bool { return errors.Is(err, witness.ErrHalt) }

// consoleTail is how many lines of each guest's console a failed test
// shows: where the guest was, not its whole run.
const consoleTail = 20

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
