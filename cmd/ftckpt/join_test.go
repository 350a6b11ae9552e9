package main

import (
	"net"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestCheckpointBackupsJoinARunningGuest is TestReplayBackupsJoinARunningGuest
// in checkpoint mode on the software machine: a primary starts alone and
// accepts backups; a backup joins it by pre-copy while the guest runs; the
// primary is killed and the backup goes live, accepting backups in turn; a
// third process joins it; the second is killed and the third goes live.
// The client's replies stay one machine's throughout (but for replies lost
// with a primary: checkpoint mode never sends a frame again). Each process
// has its own disk image (mirrored disks), copied by the pre-copy: the
// third's holds every update a reply reported.
func TestCheckpointBackupsJoinARunningGuest(t *testing.T) {
	backupsJoin(t, simKV, "--epoch", "5ms")
}

// TestKVMCheckpointBackupsJoinARunningGuest is the same with the C kv guest
// on a 4-vCPU KVM machine.
func TestKVMCheckpointBackupsJoinARunningGuest(t *testing.T) {
	vmmtest.RequireKVM(t)
	backupsJoin(t, kvmKV, "--vcpus", "4", "--epoch", "10ms")
}

// backupsJoin runs the join test in checkpoint mode on machine, with flags.
func backupsJoin(t *testing.T, machine kvMachine, flags ...string) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	dir := t.TempDir()
	udp := freePort(t, "udp")
	accept1, accept2 := freePort(t, "tcp"), freePort(t, "tcp")
	// Each process has its own disk image (--role: mirrored), which it
	// gets by pre-copy when it joins.
	disk := func(name string) []string { return []string{"--disk", filepath.Join(dir, name)} }
	common := slices.Concat([]string{"--mode", "checkpoint",
		"--net", "udp:" + udp, "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
		"--heartbeat", "20ms", "--failure-timeout", "300ms"}, flags, machine.flags, loopbackTLS(t))
	var out1, out2, out3 syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first:\n%s\nsecond:\n%s\nthird:\n%s", out1.String(), out2.String(), out3.String())
		}
	})
	first := ftckptProcess(t, &out1, slices.Concat([]string{"--role", "primary", "--accept-backups", accept1}, disk("first.img"), common)...)
	ua, _ := net.ResolveUDPAddr("udp", udp)
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := newKVClient(conn, true)
	for i := 0; i < 5; i++ {
		c.incr(t, 20*time.Second) // alone
	}
	second := ftckptProcess(t, &out2, slices.Concat([]string{"--role", "backup", "--join", accept1, "--accept-backups", accept2}, disk("second.img"), common)...)
	// A reply to a request sent after the commit's capture was released
	// by the backup's ack of a later epoch: the backup holds the guest.
	waitFor(t, &out1, "full sync's commit captured")
	for i := 0; i < 5; i++ {
		c.incr(t, 20*time.Second)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	c.resend = 100 * time.Millisecond // the primary is gone: ask again soon
	for i := 0; i < 5; i++ {
		c.incr(t, 20*time.Second)
	}
	c.resend = 0
	waitFor(t, &out2, "accepting backups")
	ftckptProcess(t, &out3, slices.Concat([]string{"--role", "backup", "--join", accept2}, disk("third.img"), common)...)
	waitFor(t, &out2, "full sync's commit captured")
	for i := 0; i < 5; i++ {
		c.incr(t, 20*time.Second)
	}
	second.Process.Signal(syscall.SIGKILL)
	second.Wait()
	c.resend = 100 * time.Millisecond
	for i := 0; i < 5; i++ {
		c.incr(t, 20*time.Second)
	}
	// Its stderr reaches out3 through a pipe: its replies can arrive
	// before its log line does.
	waitFor(t, &out3, "live as primary")
	nodetest.CheckJournal(t, filepath.Join(dir, "third.img"), machine.machine, c.updates())
}

// TestReplayJoinTurnedAwayTriesAgain: a replay backup that joins a primary
// which has a backup already is turned away, and joins again until the
// primary takes it, here once the first backup is killed.
func TestReplayJoinTurnedAwayTriesAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	dir := t.TempDir()
	accept := freePort(t, "tcp")
	common := append([]string{"--mode", "replay", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--net", "udp:" + freePort(t, "udp"), "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0", "--control", "none",
		"--heartbeat", "20ms", "--failure-timeout", "300ms"}, loopbackTLS(t)...)
	var pout, out1, out2 syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary:\n%s\nfirst backup:\n%s\nsecond backup:\n%s", pout.String(), out1.String(), out2.String())
		}
	})
	disk := func(name string) []string { return []string{"--disk", filepath.Join(dir, name)} } // mirrored: one each
	ftckptProcess(t, &pout, slices.Concat([]string{"--role", "primary", "--accept-backups", accept}, disk("primary.img"), common)...)
	first := ftckptProcess(t, &out1, slices.Concat([]string{"--role", "backup", "--join", accept}, disk("first.img"), common)...)
	waitFor(t, &out1, "full checkpoint applied")
	ftckptProcess(t, &out2, slices.Concat([]string{"--role", "backup", "--join", accept}, disk("second.img"), common)...)
	waitFor(t, &pout, "a backup tried to join")
	waitFor(t, &out2, "joining again")
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	waitFor(t, &out2, "full checkpoint applied")
}
