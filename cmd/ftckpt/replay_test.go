package main

import (
	"fmt"
	"math/rand"
	"net"
	"os"
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
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestMain lets the test binary be ftckpt itself: the multi-process tests
// run it as the primary and the backup.
func TestMain(m *testing.M) {
	if os.Getenv("FTCKPT_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// syncBuffer is output a child process writes while the test reads.
type syncBuffer = vmmtest.Console

// ftckptProcess starts this binary as `ftckpt args...`, its output in a
// buffer.
func ftckptProcess(t *testing.T, out *syncBuffer, args ...string) *exec.Cmd {
	t.Helper()
	return startAsMain(t, out, exec.Command(os.Args[0], args...))
}

// startAsMain starts cmd, a command line that runs this binary, as
// ftckpt (FTCKPT_TEST_AS_MAIN), its output in out; the test's end kills
// it.
func startAsMain(t *testing.T, out *syncBuffer, cmd *exec.Cmd) *exec.Cmd {
	t.Helper()
	cmd.Env = append(os.Environ(), "FTCKPT_TEST_AS_MAIN=1")
	cmd.Stdout, cmd.Stderr = out, out
	// A process it starts (a local run's backup) may keep the output pipe
	// open after it ended: Wait does not wait for that longer than this.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// freePort returns a loopback address whose port is free now, taken
// below the kernel's ephemeral range (32768 and up) so that other tests'
// client sockets do not take it before the process that binds it does.
func freePort(t *testing.T, network string) string {
	t.Helper()
	for i := 0; i < 1000; i++ {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.Intn(12000))
		var err error
		if network == "udp" {
			var c net.PacketConn
			if c, err = net.ListenPacket("udp", addr); err == nil {
				c.Close()
			}
		} else {
			var l net.Listener
			if l, err = net.Listen("tcp", addr); err == nil {
				l.Close()
			}
		}
		if err == nil {
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

// kvClient is a UDP client of the kv guest that checks every reply
// against what one machine would say. It increments three keys in turn,
// sends each request until a reply to it comes (UDP: at least once, so a
// request sent again may run twice), and first sets each key to a base of
// its own (a: 0, b: 1,000,000, c: 2,000,000), so that a reply's value names
// its key whichever request it answers. One machine's replies have one
// content per reply number, increase every key's value at each reply, and
// never report a key incremented more often than it was asked; without
// lossy, no reply number is skipped.
type kvClient struct {
	conn   *net.UDPConn
	sent   int // INCRs answered: the next key is kvKeys[sent%3]
	maxSeq uint64
	bySeq  map[uint64]string
	// values is the last value seen of each key, incrs how many INCRs of it
	// were sent, those sent again included.
	values map[string]uint64
	incrs  map[string]uint64
	based  bool   // every key was set to its base
	gets   uint64 // replies to GETs, which are not updates
	// lossy allows replies lost at a failover (checkpoint mode never sends
	// a frame again): reply numbers may skip.
	lossy bool
	// resend is how long a request waits for its reply before it is sent
	// again (0: 100 ms until the first reply, then a second).
	resend time.Duration
}

var kvKeys = []string{"a", "b", "c"}

// kvBase is the value SET gives key i of kvKeys before it is incremented.
const kvBase = 1_000_000

func newKVClient(conn *net.UDPConn, lossy bool) *kvClient {
	return &kvClient{conn: conn, bySeq: map[uint64]string{}, values: map[string]uint64{}, incrs: map[string]uint64{}, lossy: lossy}
}

func (c *kvClient) key() string { return kvKeys[c.sent%len(kvKeys)] }

// send sends the next INCR once more (it may run once more).
func (c *kvClient) send() {
	c.incrs[c.key()]++
	c.conn.Write([]byte("INCR " + c.key()))
}

// incr makes one INCR request, after setting the keys' bases the first
// time.
func (c *kvClient) incr(t *testing.T, within time.Duration) {
	t.Helper()
	if !c.based {
		c.setBases(t, within)
	}
	key := c.key()
	c.request(t, within, c.send, func(r sim.KVReply) bool {
		k, _ := c.keyOf(t, r)
		return k == key
	})
	c.sent++
}

// setBases sets every key to its base. A SET sent again may answer a later
// one (a reply OK does not say which key), so each is read back with a GET,
// whose value names its key, and set again until it has its base.
func (c *kvClient) setBases(t *testing.T, within time.Duration) {
	t.Helper()
	// Until the guest listens requests go again every 100 ms, and those it
	// received meanwhile are answered after the first: wait for them.
	c.request(t, within, func() { c.conn.Write([]byte("GET a")) }, func(sim.KVReply) bool { return true })
	c.drain(t)
	for i, k := range kvKeys {
		base := strconv.Itoa(i * kvBase)
		for set := false; !set; {
			c.request(t, within, func() { c.conn.Write([]byte("SET " + k + " " + base)) },
				func(r sim.KVReply) bool { return r.Status == "OK" })
			c.request(t, within, func() { c.conn.Write([]byte("GET " + k)) }, func(r sim.KVReply) bool {
				set = r.Status == "VALUE" && r.Value == base
				return set || r.Status == "NOTFOUND"
			})
		}
		c.values[k] = uint64(i * kvBase)
	}
	c.drain(t)
	c.based = true
}

// drain checks the replies that come until none has for 300 ms.
func (c *kvClient) drain(t *testing.T) {
	t.Helper()
	buf := make([]byte, 2048)
	for {
		c.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.conn.Read(buf)
		if err != nil {
			return
		}
		c.check(t, buf[:n])
	}
}

// updates is how many updates (SETs and INCRs) the replies so far
// reported, lost ones included: the kv guest journals update n at sector
// n%1000 of its journal.
func (c *kvClient) updates() uint64 { return c.maxSeq - c.gets }

// keyOf is the key whose value an INCR reply reports, and the value.
func (c *kvClient) keyOf(t *testing.T, r sim.KVReply) (string, uint64) {
	t.Helper()
	v, err := strconv.ParseUint(r.Value, 10, 64)
	if err != nil || r.Status != "VALUE" || v/kvBase >= uint64(len(kvKeys)) {
		t.Fatalf("reply %d %s %s: not an INCR's of one of %v", r.Seq, r.Status, r.Value, kvKeys)
	}
	return kvKeys[v/kvBase], v
}

// request sends with send until a reply answered says is the answer comes,
// checking every reply that comes meanwhile.
func (c *kvClient) request(t *testing.T, within time.Duration, send func(), answered func(sim.KVReply) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	buf := make([]byte, 2048)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no answer within %v", within)
		}
		send()
		resend := c.resend
		switch {
		case resend != 0:
		case c.maxSeq == 0:
			// Nothing answered yet: the guest may not be listening.
			resend = 100 * time.Millisecond
		default:
			resend = time.Second // a reply slow under load is not taken for lost
		}
		until := time.Now().Add(resend)
		c.conn.SetReadDeadline(until)
		for {
			n, err := c.conn.Read(buf)
			if err != nil {
				// Timed out, or refused (no one has the port: the
				// primary died and the backup is not live yet):
				// send again when the interval is over.
				time.Sleep(time.Until(until))
				break
			}
			r, ok := c.check(t, buf[:n])
			if ok && answered(r) {
				return
			}
		}
	}
}

// check checks one reply against the replies before it; ok is false for a
// reply number seen before (the failover boundary's repeat).
func (c *kvClient) check(t *testing.T, payload []byte) (r sim.KVReply, ok bool) {
	t.Helper()
	s := string(payload)
	r, err := sim.ParseKVPayload(payload)
	if err != nil || r.Status == "ERR" {
		t.Fatalf("reply %q: %v", s, err)
	}
	if prev, seen := c.bySeq[r.Seq]; seen {
		if prev != s {
			t.Fatalf("reply %d was %q and then %q: two machines", r.Seq, prev, s)
		}
		return r, false
	}
	c.bySeq[r.Seq] = s
	switch {
	case c.maxSeq == 0 || r.Seq == c.maxSeq+1:
	case r.Seq > c.maxSeq && c.lossy:
	default:
		t.Fatalf("reply %d after reply %d: a reply was lost", r.Seq, c.maxSeq)
	}
	c.maxSeq = max(c.maxSeq, r.Seq)
	if !c.based {
		if r.Status != "OK" {
			c.gets++
		}
		return r, true // SETs and GETs, checked by setBases
	}
	k, v := c.keyOf(t, r)
	if base := uint64(slices.Index(kvKeys, k) * kvBase); v <= c.values[k] || v > base+c.incrs[k] {
		t.Fatalf("reply %q: %s at %d after %d, asked to increment %d times: not one machine (replies so far: %v)",
			s, k, v-base, c.values[k]-base, c.incrs[k], c.bySeq)
	}
	c.values[k] = v
	return r, true
}

// TestReplayKill9AtRandomMoments runs `ftckpt --mode replay` as two real
// processes (the software machine's kv guest, a disk-lease witness and a
// shared disk image), kills the primary with SIGKILL at a random moment
// under client traffic, 20 times, and checks the backup takes over and the
// client's replies stay one machine's.
func TestReplayKill9AtRandomMoments(t *testing.T) {
	kill9AtRandomMoments(t, false, simKV, "--mode", "replay")
}

// TestCheckpointKill9AtRandomMoments is the same for `ftckpt --mode
// checkpoint` on the software machine (epochs of 5 ms), where replies
// of the last epoch may die with the primary: the counter the client reads
// never goes backwards and never skips a value it saw acknowledged.
func TestCheckpointKill9AtRandomMoments(t *testing.T) {
	kill9AtRandomMoments(t, true, simKV, "--mode", "checkpoint", "--epoch", "5ms")
}

// TestKVMReplayKill9AtRandomMoments is TestReplayKill9AtRandomMoments with
// the C kv guest on KVM.
func TestKVMReplayKill9AtRandomMoments(t *testing.T) {
	vmmtest.RequireKVM(t)
	kill9AtRandomMoments(t, false, kvmKV, "--mode", "replay")
}

// TestKVMCheckpointKill9AtRandomMoments is TestCheckpointKill9AtRandomMoments
// with the C kv guest on a 4-vCPU KVM machine.
func TestKVMCheckpointKill9AtRandomMoments(t *testing.T) {
	vmmtest.RequireKVM(t)
	kill9AtRandomMoments(t, true, kvmKV, "--mode", "checkpoint", "--vcpus", "4", "--epoch", "10ms")
}

// kills is how many times a kill test kills its primary: 20, or
// FTCKPT_KILLS (scripts/test-kvm.sh sets fewer inside the emulated machine,
// where every guest exit costs a third of a millisecond).
func kills() int {
	if n, err := strconv.Atoi(os.Getenv("FTCKPT_KILLS")); err == nil && n > 0 {
		return n
	}
	return 20
}

// kvMachine is the machine a kill test's kv guest runs on: its flags (after
// the test's own, so they may override them; param journal=1000 flush=1:
// the guest journals every update and flushes before it replies), and its
// kind, which says where the journal is (nodetest.Journal).
type kvMachine struct {
	flags   []string
	machine node.Machine
}

var (
	// simKV is the software machine's kv guest.
	simKV = kvMachine{flags: []string{"--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--param", "journal=1000", "--param", "flush=1"}, machine: node.MachineSim}
	// kvmKV is the C kv guest on KVM (guests/pure/kvtable.h). Its vCPU
	// polls the network, a busy core per process, so a loaded host gets a
	// longer failure timeout.
	kvmKV = kvMachine{flags: []string{"--machine", "kvm", "--guest", "kv", "--memory", "16M",
		"--param", "journal=1000", "--param", "flush=1", "--failure-timeout", "1s"}, machine: node.MachineKVM}
)

// kill9AtRandomMoments runs ftckpt with mode (its flags) on machine as a
// primary and a backup process, kills the primary at a random moment under
// a UDP client's traffic, 20 times, and checks the backup takes over, the
// client's replies stay one machine's (lossy: but for replies lost), and
// the shared disk holds the journal of every update a reply reported.
func kill9AtRandomMoments(t *testing.T, lossy bool, machine kvMachine, mode ...string) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < kills(); i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			// Under load the primary may find its backup silent and go on
			// alone (it then rightly holds the next generation and the
			// backup stays a backup): a kill then leaves no one, which
			// tests nothing. That run is started again.
			for attempt := 1; !killPrimaryUnderTraffic(t, rng, lossy, machine, mode); attempt++ {
				if attempt == 3 {
					t.Fatal("the primary went on alone before the kill in 3 runs in a row")
				}
				t.Logf("run %d: the primary lost its backup before the kill; running again", attempt)
			}
		})
	}
}

// killPrimaryUnderTraffic runs one primary and one backup, kills the
// primary under a client's traffic and checks the backup's replies. It
// reports false, having checked nothing, if the primary had gone on alone
// before the kill.
func killPrimaryUnderTraffic(t *testing.T, rng *rand.Rand, lossy bool, machine kvMachine, mode []string) bool {
	dir := t.TempDir()
	udp, peer := freePort(t, "udp"), freePort(t, "tcp")
	common := slices.Concat(mode, []string{
		"--net", "udp:" + udp, "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M", "--disk-mode", "shared",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
		"--heartbeat", "20ms", "--failure-timeout", "300ms"}, machine.flags, loopbackTLS(t))
	var bout, pout syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary:\n%s\nbackup:\n%s", pout.String(), bout.String())
		}
	})
	backup := ftckptProcess(t, &bout, append([]string{"--role", "backup", "--listen", peer}, common...)...)
	primary := ftckptProcess(t, &pout, append([]string{"--role", "primary", "--peer", peer}, common...)...)

	ua, _ := net.ResolveUDPAddr("udp", udp)
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := newKVClient(conn, lossy)
	for n := 1 + rng.Intn(20); n > 0; n-- {
		c.incr(t, time.Minute)
	}
	// A request in flight (incr sends it again), then SIGKILL at a
	// random moment.
	c.send()
	time.Sleep(time.Duration(rng.Intn(5000)) * time.Microsecond)
	primary.Process.Signal(syscall.SIGKILL)
	primary.Wait()
	if strings.Contains(pout.String(), "continuing alone") {
		backup.Process.Kill()
		backup.Wait()
		return false
	}
	// The request in flight may have died with the primary: ask
	// again soon, until the backup answers.
	c.resend = 100 * time.Millisecond
	c.incr(t, time.Minute)
	c.resend = 0
	for n := 0; n < 4; n++ {
		c.incr(t, time.Minute)
	}
	// The backup's stderr reaches bout through a pipe: its
	// replies can arrive before its log line does.
	waitFor(t, &bout, "live as primary")
	nodetest.CheckJournal(t, filepath.Join(dir, "disk.img"), machine.machine, c.updates())
	return true
}

// TestReplayBackupsJoinARunningGuest is FT VMotion through the CLI, as
// real processes: a primary starts alone and accepts backups; a backup
// joins it; the primary is killed and the backup goes live, accepting
// backups in turn; a third process joins it; the second is killed and the
// third goes live. The client's replies stay one machine's throughout.
// Each process has its own disk image (mirrored disks), which a joining
// backup gets by pre-copy: the third's holds every update a reply
// reported.
func TestReplayBackupsJoinARunningGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	dir := t.TempDir()
	udp := freePort(t, "udp")
	accept1, accept2 := freePort(t, "tcp"), freePort(t, "tcp")
	common := append([]string{"--mode", "replay", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--param", "journal=1000", "--param", "flush=1", "--net", "udp:" + udp, "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
		"--heartbeat", "20ms", "--failure-timeout", "300ms"}, loopbackTLS(t)...)
	// Each process has its own disk image (--role: mirrored), which it
	// gets by pre-copy when it joins.
	disk := func(name string) []string { return []string{"--disk", filepath.Join(dir, name)} }
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
	c := newKVClient(conn, false)
	for i := 0; i < 5; i++ {
		c.incr(t, time.Minute) // alone
	}
	second := ftckptProcess(t, &out2, slices.Concat([]string{"--role", "backup", "--join", accept1, "--accept-backups", accept2}, disk("second.img"), common)...)
	waitFor(t, &out1, "a backup attached")
	waitFor(t, &out2, "full checkpoint applied")
	for i := 0; i < 5; i++ {
		c.incr(t, time.Minute)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	c.resend = 100 * time.Millisecond // the primary is gone: ask again soon
	for i := 0; i < 5; i++ {
		c.incr(t, time.Minute)
	}
	c.resend = 0
	waitFor(t, &out2, "accepting backups")
	ftckptProcess(t, &out3, slices.Concat([]string{"--role", "backup", "--join", accept2}, disk("third.img"), common)...)
	waitFor(t, &out3, "full checkpoint applied")
	for i := 0; i < 5; i++ {
		c.incr(t, time.Minute)
	}
	second.Process.Signal(syscall.SIGKILL)
	second.Wait()
	c.resend = 100 * time.Millisecond
	for i := 0; i < 5; i++ {
		c.incr(t, time.Minute)
	}
	// Its stderr reaches out3 through a pipe: its replies can arrive
	// before its log line does.
	waitFor(t, &out3, "live as primary")
	nodetest.CheckJournal(t, filepath.Join(dir, "third.img"), node.MachineSim, c.updates())
}

// waitFor waits until out contains s.
func waitFor(t *testing.T, out *syncBuffer, s string) {
	t.Helper()
	waitForOutput(t, out, fmt.Sprintf("%q", s), func(output string) bool { return strings.Contains(output, s) })
}

// waitForAfter waits until out, from byte from on, contains s.
func waitForAfter(t *testing.T, out *syncBuffer, from int, s string) {
	t.Helper()
	waitForOutput(t, out, fmt.Sprintf("%q after byte %d", s, from), func(output string) bool { return strings.Contains(output[from:], s) })
}

// waitForMatch waits until re matches out at least n times.
func waitForMatch(t *testing.T, out *syncBuffer, re *regexp.Regexp, n int) {
	t.Helper()
	waitForOutput(t, out, fmt.Sprintf("%d matches of %v", n, re), func(output string) bool { return len(re.FindAllString(output, -1)) >= n })
}

// waitForOutput waits until says holds of what out holds (see
// vmmtest.WaitUntil, which fails the test after its bound naming what it
// waited for); a wait that failed shows out.
func waitForOutput(t *testing.T, out *syncBuffer, what string, says func(output string) bool) {
	t.Helper()
	waited := false
	defer func() {
		if !waited {
			t.Logf("the output waited on:\n%s", out.String())
		}
	}()
	vmmtest.WaitUntil(t, "output saying "+what, func() bool { return says(out.String()) })
	waited = true
}

// TestReplayRefusesAMismatchedBackup: a backup started without the
// primary's disk is refused when it connects, with both machines named,
// not when it would go live.
func TestReplayRefusesAMismatchedBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	dir := t.TempDir()
	peer := freePort(t, "tcp")
	common := append([]string{"--mode", "replay", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--net", "udp:" + freePort(t, "udp"), "--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0"}, loopbackTLS(t)...)
	var bout, pout syncBuffer
	backup := ftckptProcess(t, &bout, append([]string{"--role", "backup", "--listen", peer, "--disk", "none"}, common...)...)
	waitFor(t, &bout, backupReadyPrefix)
	ftckptProcess(t, &pout, append([]string{"--role", "primary", "--peer", peer,
		"--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M"}, common...)...)
	if err := backup.Wait(); err == nil {
		t.Fatalf("the backup accepted a primary with a disk it lacks:\n%s", bout.String())
	}
	want := `peer's machine is "replay mode on the software machine, 1 vCPU, network, 1048576-byte mirrored disk", ours "replay mode on the software machine, 1 vCPU, network"`
	if !strings.Contains(bout.String(), want) {
		t.Fatalf("the backup's error does not name both machines:\n%s", bout.String())
	}
}

// TestKVMSMPInvariantAcrossFailover kills the primary of a 4-vCPU smp guest
// in checkpoint mode at random moments: each vCPU adds to its own counter
// and to a shared one under a spinlock, and vCPU 0 checks after every round
// that they agree. The backup, going live from the last committed epoch
// (every vCPU's state and memory of one instant), must go on with rounds
// that hold, 5 times.
func TestKVMSMPInvariantAcrossFailover(t *testing.T) {
	vmmtest.RequireKVM(t)
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	rounds := regexp.MustCompile(`smp: round (\d+) OK`)
	for i := 0; i < min(5, kills()); i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			dir := t.TempDir()
			peer := freePort(t, "tcp")
			common := append([]string{"--mode", "checkpoint", "--machine", "kvm", "--guest", "smp", "--vcpus", "4",
				"--memory", "16M", "--param", "iters=2000", "--epoch", "10ms", "--net", "none", "--disk", "none",
				"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
				"--heartbeat", "20ms", "--failure-timeout", "1s"}, loopbackTLS(t)...)
			var bout, pout syncBuffer
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("primary:\n%s\nbackup:\n%s", pout.String(), bout.String())
				}
			})
			ftckptProcess(t, &bout, append([]string{"--role", "backup", "--listen", peer}, common...)...)
			primary := ftckptProcess(t, &pout, append([]string{"--role", "primary", "--peer", peer}, common...)...)
			// Counted, not "round 2 OK" looked for: the guest's console and
			// the node's log share the output, and a log line can land in
			// the middle of a round's line (the emulated KVM split round 2's).
			vmmtest.WaitUntil(t, "the primary's guest to complete 2 rounds", func() bool {
				return len(rounds.FindAllString(pout.String(), -1)) >= 2
			})
			// The guest runs during the full sync's pre-copy: in the
			// emulated KVM round 2 can come before the backup has a state.
			waitFor(t, &bout, "full sync committed")
			time.Sleep(time.Duration(rng.Intn(300)) * time.Millisecond)
			primary.Process.Signal(syscall.SIGKILL)
			primary.Wait()
			if strings.Contains(pout.String(), "continuing alone") {
				t.Fatalf("the primary lost its backup before the kill")
			}
			waitFor(t, &bout, "live as primary")
			// Two rounds completed on the backup after going live.
			vmmtest.WaitUntil(t, "the backup gone live to complete 2 rounds", func() bool {
				return len(rounds.FindAllString(bout.String(), -1)) >= 2
			})
			if strings.Contains(bout.String(), "VIOLATION") {
				t.Fatal("the invariant broke on the backup")
			}
		})
	}
}
