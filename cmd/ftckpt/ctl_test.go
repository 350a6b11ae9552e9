package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestCtlAndStatusOfAPair drives ftckpt ctl and ftckpt status against a
// running checkpoint-mode pair of the software machine (in this process):
// the primary's socket found in the default directory, requests good and
// bad, and the cluster table from the witness, a control socket, a
// metrics URL and a node that is not there.
func TestCtlAndStatusOfAPair(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineSim, "kv")
	o.Control, o.Metrics = node.DefaultControlPath(node.RolePrimary), "127.0.0.1:0"
	p := nodetest.Start(t, o)
	p.WaitInSync()
	ctx := context.Background()
	cli := func(args ...string) (string, error) { return witnessCLI(ctx, args...) }

	var out string
	vmmtest.WaitUntil(t, "ftckpt ctl status to say in sync", func() bool {
		var err error
		if out, err = cli("ctl", "status"); err != nil {
			t.Fatal(err)
		}
		return strings.Contains(out, "role        primary, generation 1, in sync")
	})
	t.Logf("ftckpt ctl status:\n%s", out)
	js, err := cli("ctl", "--control", o.Control, "--json", "status")
	if err != nil {
		t.Fatal(err)
	}
	var resp node.Response
	if err := json.Unmarshal([]byte(js), &resp); err != nil || resp.Status == nil || resp.Status.Role != "primary" {
		t.Fatalf("ftckpt ctl --json status: %v\n%s", err, js)
	}
	for _, tc := range []struct {
		args []string
		want string
		ok   bool
	}{
		{[]string{"ctl", "set", "epoch", "10ms"}, "epoch 10ms from the next epoch", true},
		{[]string{"ctl", "set", "epoch", "auto"}, "epoch auto (5ms to 500ms)", true},
		{[]string{"ctl", "set", "epoch"}, "set takes a name and a value", false},
		{[]string{"ctl", "set", "epoch", "fast"}, "want a duration from 100µs to 1m", false},
		{[]string{"ctl", "pause", "now"}, "pause takes no arguments", false},
		{[]string{"ctl", "reboot"}, `op "reboot": want status, set, pause, resume, detach-backup or failover`, false},
		{[]string{"ctl", "--control", o.Control + ".backup", "failover"}, "this node is not a primary", false},
		{[]string{"ctl", "--backup", "status"}, "no backup on this host answers", false},
		{[]string{"ctl", "--control", o.Control + ".backup", "pause"}, "this node is a backup", false},
		{[]string{"ctl", "--control", o.Control + ".nothing", "status"}, "no node answers at", false},
		{[]string{"ctl", "pause"}, "guest paused", true},
		{[]string{"ctl", "resume"}, "guest running", true},
	} {
		out, err := cli(tc.args...)
		got := out
		if err != nil {
			got = err.Error()
		}
		if (err == nil) != tc.ok || !strings.Contains(got, tc.want) {
			t.Errorf("ftckpt %s: %q (err %v), want %q", strings.Join(tc.args, " "), out, err, tc.want)
		}
	}

	out, err = cli("status", "--arbiter", o.Arbiter, "--node", o.Control, "--node", "http://"+p.Backup.MetricsAddr(), "--node", o.Control+".nothing")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ftckpt status:\n%s", out)
	oneSpace := regexp.MustCompile(" +").ReplaceAllString(out, " ")
	for _, want := range []string{"generation 1 held by primary-", "NODE MODE ROLE GEN IN SYNC LAG HEALTH",
		o.Control + " checkpoint primary 1 yes [0-9]+ epochs ok",
		"http://" + p.Backup.MetricsAddr() + " checkpoint backup - yes holds epoch [0-9]+ ok", "DOWN: no node answers"} {
		if !regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(oneSpace) && !regexp.MustCompile(want).MatchString(oneSpace) {
			t.Errorf("ftckpt status lacks %q", want)
		}
	}
	if out, err = cli("status", "--arbiter", ""); err != nil || !strings.Contains(out, o.Control) {
		t.Errorf("ftckpt status of this host's nodes: %v\n%s", err, out)
	}
}

// TestLocalRunFailover hands a local run's guest (the software machine's
// kv, checkpoint mode) over with ftckpt ctl failover: the first process
// ends cleanly, its backup goes live with generation 2 and is protected
// again by a backup it starts (--respawn), whose certificates outlived the
// first process; the client's counters go on, one machine's.
func TestLocalRunFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	dir := t.TempDir()
	ctl := filepath.Join(dir, "p.sock")
	udp := freePort(t, "udp")
	var out syncBuffer
	local := ftckptProcess(t, &out, "--mode", "checkpoint", "--machine", "sim", "--guest", "kv",
		"--net", "udp:"+udp, "--disk", filepath.Join(dir, "disk.img"), "--arbiter", "disk:"+filepath.Join(dir, "lease"),
		"--status-every", "0", "--control", ctl)
	pids := regexp.MustCompile(`started a backup process pid=(\d+) `)
	t.Cleanup(func() {
		for _, m := range pids.FindAllStringSubmatch(out.String(), -1) {
			if pid, err := strconv.Atoi(m[1]); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	status := func(path string) *node.Status {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := node.Ask(ctx, path, node.Request{Op: "status"})
		if err != nil {
			return nil
		}
		return resp.Status
	}
	vmmtest.WaitUntil(t, "the local run's primary in sync", func() bool {
		st := status(ctl)
		return st != nil && st.InSync
	})
	c := nodetest.NewKVClient(t, udp, node.ModeCheckpoint)
	for range 5 {
		c.Incr()
	}
	if msg, err := witnessCLI(context.Background(), "ctl", "--control", ctl, "failover"); err != nil {
		t.Fatalf("ftckpt ctl failover: %v\n%s", err, out.String())
	} else {
		t.Log(msg)
	}
	exited := make(chan error, 1)
	go func() { exited <- local.Wait() }() // the live backup keeps the output open: WaitDelay
	vmmtest.WaitUntil(t, "the live backup protected again", func() bool {
		for _, path := range node.FindControlSockets(node.RoleBackup) { // respawned: the default socket
			if st := status(path); st != nil && st.Role == "primary" && st.Generation == 2 && st.InSync {
				return true
			}
		}
		return false
	})
	c.Resend = 100 * time.Millisecond
	for range 5 {
		c.Incr()
	}
	select {
	case err := <-exited:
		if err != nil && !errors.Is(err, exec.ErrWaitDelay) || local.ProcessState.ExitCode() != 0 {
			t.Fatalf("the handing-over process ended with %v:\n%s", err, out.String())
		}
	case <-time.After(vmmtest.Bound):
		t.Fatalf("the handing-over process did not end:\n%s", out.String())
	}
}

// TestPlannedFailoverBackAndForth runs a pair the way two hosts do (two
// --role processes, each with its own disk image: mirrored disks), each
// given the other's --accept-backups as --rejoin. ftckpt ctl failover on
// the primary hands the guest over; the old primary joins the new one as
// its backup, by pre-copy, and the pair is protected again with no one's
// help; then the same the other way. The rejoining image is the new
// primary's but for the writes since, and so is the memory the old
// primary kept: its sync sends the other blocks and pages as kept. The client's counters go on, one machine's, and the journal on the
// last primary's image holds every update a reply reported. In both modes.
func TestPlannedFailoverBackAndForth(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	plannedFailoverBackAndForth(t, "sim", "1M", "300ms")
}

// TestKVMPlannedFailoverBackAndForth is TestPlannedFailoverBackAndForth
// with the C kv guest on KVM (one vCPU, 64 MiB of memory): the memory
// each rejoining node keeps is a KVM machine's. Its failure timeout is
// longer: in the emulated KVM machine a backup applying its first full
// checkpoint fell silent for 300 ms (a handover does not wait for it: the
// link's end says the primary has gone).
func TestKVMPlannedFailoverBackAndForth(t *testing.T) {
	vmmtest.RequireKVM(t)
	plannedFailoverBackAndForth(t, "kvm", "64M", "2s")
}

// plannedFailoverBackAndForth runs the test on the machine --machine
// names, with --memory memory and --failure-timeout failureTimeout.
func plannedFailoverBackAndForth(t *testing.T, machine, memory, failureTimeout string) {
	kind, err := node.ParseMachine(machine)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []node.Mode{node.ModeCheckpoint, node.ModeReplay} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			udp := freePort(t, "udp")
			listen, accA, accB := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
			sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
			common := append([]string{"--mode", mode.String(), "--machine", machine, "--guest", "kv", "--memory", memory,
				"--param", "journal=1000", "--param", "flush=1", "--net", "udp:" + udp, "--disk-size", "1M",
				"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
				"--heartbeat", "20ms", "--failure-timeout", failureTimeout}, loopbackTLS(t)...)
			var outA, outB syncBuffer
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("A:\n%s\nB:\n%s", outA.String(), outB.String())
				}
			})
			ftckptProcess(t, &outB, slices.Concat([]string{"--role", "backup", "--listen", listen, "--accept-backups", accB,
				"--rejoin", accA, "--control", sockB, "--disk", filepath.Join(dir, "b.img")}, common)...)
			waitFor(t, &outB, backupReadyPrefix)
			ftckptProcess(t, &outA, slices.Concat([]string{"--role", "primary", "--peer", listen, "--accept-backups", accA,
				"--rejoin", accB, "--control", sockA, "--disk", filepath.Join(dir, "a.img")}, common)...)
			protected := func(sock string, gen uint64) func() bool {
				return func() bool {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					resp, err := node.Ask(ctx, sock, node.Request{Op: "status"})
					return err == nil && resp.Status != nil && resp.Status.Role == "primary" && resp.Status.Generation == gen && resp.Status.InSync
				}
			}
			vmmtest.WaitUntil(t, "A protected", protected(sockA, 1))
			c := newKVClient(mustDialUDP(t, udp), mode == node.ModeCheckpoint)
			for range 5 {
				c.incr(t, 20*time.Second)
			}
			for i, hop := range []struct {
				from, to   string
				out, toOut *syncBuffer
			}{{sockA, sockB, &outA, &outB}, {sockB, sockA, &outB, &outA}} {
				keptBefore := len(keptBlocks.FindAllString(hop.toOut.String(), -1))
				pagesBefore := len(keptPages.FindAllString(hop.toOut.String(), -1))
				if msg, err := witnessCLI(context.Background(), "ctl", "--control", hop.from, "failover"); err != nil {
					t.Fatalf("hop %d: ftckpt ctl failover: %v", i+1, err)
				} else {
					t.Log(msg)
				}
				c.resend = 100 * time.Millisecond
				for range 5 {
					c.incr(t, 20*time.Second)
				}
				c.resend = 0
				vmmtest.WaitUntil(t, fmt.Sprintf("hop %d: the new primary protected by the old one", i+1), protected(hop.to, uint64(i+2)))
				if !strings.Contains(hop.out.String(), "joining the new primary as its backup") {
					t.Fatalf("hop %d: the old primary did not say it rejoins", i+1)
				}
				// The lines may still be in the pipe from the process's
				// stderr when its status says it is in sync: wait for them.
				vmmtest.WaitUntil(t, fmt.Sprintf("hop %d: the new primary to say it sent blocks the rejoining image had", i+1), func() bool {
					return len(keptBlocks.FindAllString(hop.toOut.String(), -1)) > keptBefore
				})
				vmmtest.WaitUntil(t, fmt.Sprintf("hop %d: the new primary to say it sent pages the rejoining backup had", i+1), func() bool {
					return len(keptPages.FindAllString(hop.toOut.String(), -1)) > pagesBefore
				})
				for range 5 {
					c.incr(t, 20*time.Second)
				}
			}
			nodetest.CheckJournal(t, filepath.Join(dir, "a.img"), kind, c.updates())
		})
	}
}

// keptBlocks matches a primary's log line saying its backup's image had
// some of the disk's blocks already (a full sync's first pass, either mode).
var keptBlocks = regexp.MustCompile(`(of them the backup had|disk blocks the backup had)"?=[1-9]`)

// keptPages matches a primary's log line saying its backup's memory had
// some of the guest's pages already (a full sync's first pass, either
// mode).
var keptPages = regexp.MustCompile(`"pages the backup had"=[1-9]`)

// mustDialUDP is a UDP socket to addr, closed at the test's end.
func mustDialUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestSIGTERMedPrimaryHandsOver: a checkpoint-mode --role primary process
// given SIGTERM, its backup (another process) in sync, hands the guest over
// before it exits, as ftckpt ctl failover does: it says so, exits 0, the
// backup goes live with generation 2 and every output released by the
// primary, and the client's counters go on, one machine's; the backup's
// image (mirrored) holds every update a reply reported.
func TestSIGTERMedPrimaryHandsOver(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	sigtermedPrimaryHandsOver(t, "sim", "1M")
}

// TestKVMSIGTERMedPrimaryHandsOver is TestSIGTERMedPrimaryHandsOver with
// the C kv guest on KVM (one vCPU, 64 MiB).
func TestKVMSIGTERMedPrimaryHandsOver(t *testing.T) {
	vmmtest.RequireKVM(t)
	sigtermedPrimaryHandsOver(t, "kvm", "64M")
}

func sigtermedPrimaryHandsOver(t *testing.T, machine, memory string) {
	kind, err := node.ParseMachine(machine)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	udp := freePort(t, "udp")
	pair := rolePair(t, dir, "--mode", "checkpoint", "--machine", machine, "--guest", "kv", "--memory", memory,
		"--param", "journal=1000", "--param", "flush=1", "--net", "udp:"+udp, "--disk-size", "1M",
		"--arbiter", "disk:"+filepath.Join(dir, "lease"),
		"--status-every", "0", "--heartbeat", "20ms", "--failure-timeout", "2s")
	primary := pair.primary
	c := newKVClient(mustDialUDP(t, udp), true)
	for range 5 {
		c.incr(t, 20*time.Second)
	}
	primary.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- primary.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the primary exited with %v after SIGTERM", err)
		}
	case <-time.After(vmmtest.Bound):
		t.Fatalf("the primary did not exit within %v of SIGTERM", vmmtest.Bound)
	}
	for _, said := range []string{"handing over to the backup (asked to stop): every output released", "handed over to the backup; stopping"} {
		if !strings.Contains(pair.outP.String(), said) {
			t.Fatalf("the primary did not say %q", said)
		}
	}
	c.resend = 100 * time.Millisecond
	for range 5 {
		c.incr(t, 20*time.Second)
	}
	if resp, err := ask(pair.sockB); err != nil || resp.Status.Role != "primary" || resp.Status.Generation != 2 {
		t.Fatalf("the backup's status after the handover: %+v, %v; want primary of generation 2", resp.Status, err)
	}
	nodetest.CheckJournal(t, filepath.Join(dir, "b.img"), kind, c.updates())
}

// processPair is a --role backup process and the --role primary process
// that protects its guest with it (rolePair).
type processPair struct {
	primary, backup *exec.Cmd
	outP, outB      *syncBuffer
	sockP, sockB    string // their control sockets
}

// rolePair starts a --role backup process listening on loopback, then a
// --role primary one that dials it, both with args (and loopback TLS),
// each with its own image and control socket in dir, and waits until the
// primary says it is in sync. The processes' output is logged if the test
// fails.
func rolePair(t *testing.T, dir string, args ...string) *processPair {
	t.Helper()
	listen := freePort(t, "tcp")
	common := slices.Concat(args, loopbackTLS(t))
	p := &processPair{outP: &syncBuffer{}, outB: &syncBuffer{}, sockP: filepath.Join(dir, "p.sock"), sockB: filepath.Join(dir, "b.sock")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary:\n%s\nbackup:\n%s", p.outP.String(), p.outB.String())
		}
	})
	p.backup = ftckptProcess(t, p.outB, slices.Concat([]string{"--role", "backup", "--listen", listen, "--control", p.sockB,
		"--disk", filepath.Join(dir, "b.img")}, common)...)
	waitFor(t, p.outB, backupReadyPrefix)
	p.primary = ftckptProcess(t, p.outP, slices.Concat([]string{"--role", "primary", "--peer", listen, "--control", p.sockP,
		"--disk", filepath.Join(dir, "a.img")}, common)...)
	vmmtest.WaitUntil(t, "the primary in sync", func() bool {
		resp, err := ask(p.sockP)
		return err == nil && resp.Status.InSync
	})
	return p
}

// ask asks the node at control socket sock for its status.
func ask(sock string) (node.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := node.Ask(ctx, sock, node.Request{Op: "status"})
	if err == nil && resp.Status == nil {
		err = errors.New("a status answer without a status")
	}
	return resp, err
}

// TestSecondSIGTERMEndsAHandover: a --role primary given SIGTERM while its
// backup cannot answer (stopped with SIGSTOP) waits for the final
// checkpoint's acknowledgement; a second SIGTERM ends the process at once,
// killed by the signal, as a user pressing Ctrl-C twice expects.
func TestSecondSIGTERMEndsAHandover(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	dir := t.TempDir()
	pair := rolePair(t, dir, "--mode", "checkpoint", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--net", "udp:"+freePort(t, "udp"), "--disk-size", "1M", "--arbiter", "disk:"+filepath.Join(dir, "lease"), "--status-every", "0",
		"--heartbeat", "20ms", "--failure-timeout", "30s")
	primary, backup := pair.primary, pair.backup
	backup.Process.Signal(syscall.SIGSTOP)
	defer backup.Process.Signal(syscall.SIGCONT)
	primary.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- primary.Wait() }()
	select {
	case err := <-exited:
		t.Fatalf("the primary exited (%v) while its handover waited for a stopped backup", err)
	case <-time.After(time.Second):
	}
	primary.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
			t.Fatalf("the primary ended with %v after a second SIGTERM, want killed by it", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the primary did not end within 5 s of a second SIGTERM")
	}
}
