package main

import (
	"bytes"
	"encoding/binary"
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
	"sync"
	"syscall"
	"testing"
	"time"

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

// syncBuffer is a bytes.Buffer a child process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

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

// kvClient is a UDP client of the kv guest. It increments three keys in
// turn (distinct requests: a reply the backup could not reproduce would
// show as one reply number with two contents, or a key's count off), sends
// each request until a new reply comes (UDP: at least once), and checks
// every reply against what one machine would say.
type kvClient struct {
	conn     *net.UDPConn
	sent     int
	attempts int
	maxSeq   uint64
	bySeq    map[uint64]string
	values   map[string]uint64
	prevKey  string
	// prevRetried: the previous request was sent more than once, so it
	// may have run twice.
	prevRetried bool
	// lossy allows replies lost at a failover (checkpoint mode never sends
	// a frame again): reply numbers may skip, and the request being
	// answered may then have run once more for each reply lost.
	lossy bool
	// resend is how long a request waits for its reply before it is sent
	// again (0: 100 ms until the first reply, then a second).
	resend time.Duration
	// unseen counts, per key, the runs of its INCR whose replies may have
	// been lost: a reply lost is a run of the request being answered, or
	// of the previous one if that was sent more than once.
	unseen map[string]uint64
}

var kvKeys = []string{"a", "b", "c"}

func (c *kvClient) key() string { return kvKeys[c.sent%len(kvKeys)] }

func (c *kvClient) send() {
	c.attempts++
	c.conn.Write([]byte("INCR " + c.key()))
}

// incr makes one request.
func (c *kvClient) incr(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	buf := make([]byte, 2048)
	key := c.key()
	if c.unseen == nil {
		c.unseen = map[string]uint64{}
	}
	for answered := false; !answered; {
		if time.Now().After(deadline) {
			t.Fatalf("no reply to INCR %s within %v", key, within)
		}
		c.send()
		resend := c.resend
		switch {
		case resend != 0:
		case c.maxSeq == 0:
			// Nothing answered yet: the guest may not be listening.
			resend = 100 * time.Millisecond
		default:
			// Long enough that a reply slow under load is not taken for
			// lost: a needless resend runs the INCR twice, and two in a
			// row confuse the model.
			resend = time.Second
		}
		c.conn.SetReadDeadline(time.Now().Add(resend))
		for !answered {
			n, err := c.conn.Read(buf)
			if err != nil {
				break // timed out: send again
			}
			r := string(buf[:n])
			kr, err := sim.ParseKVPayload(buf[:n])
			if err != nil || kr.Status != "VALUE" {
				t.Fatalf("reply %q: %v", r, err)
			}
			if prev, ok := c.bySeq[kr.Seq]; ok {
				if prev != r {
					t.Fatalf("reply %d was %q and then %q: two machines", kr.Seq, prev, r)
				}
				continue // the failover boundary's repeat
			}
			c.bySeq[kr.Seq] = r
			lost := uint64(0)
			switch {
			case c.maxSeq == 0 || kr.Seq == c.maxSeq+1:
			case kr.Seq > c.maxSeq && c.lossy:
				lost = kr.Seq - c.maxSeq - 1
			default:
				t.Fatalf("reply %d after reply %d: a reply was lost", kr.Seq, c.maxSeq)
			}
			c.maxSeq = kr.Seq
			if lost > 0 {
				c.unseen[key] += lost
				if c.prevRetried {
					c.unseen[c.prevKey] += lost
				}
			}
			v, _ := strconv.ParseUint(kr.Value, 10, 64)
			switch {
			case v > c.values[key] && v <= c.values[key]+1+c.unseen[key]:
				// It ran once more than seen, or again after replies lost.
				c.values[key], c.unseen[key], answered = v, 0, true
			case c.prevRetried && v > c.values[c.prevKey] && v <= c.values[c.prevKey]+1+c.unseen[c.prevKey]:
				c.values[c.prevKey], c.unseen[c.prevKey] = v, 0 // the resent request ran twice
			default:
				t.Fatalf("INCR %s answered %q after value %d: not one machine (replies so far: %v; values %v)", key, r, c.values[key], c.bySeq, c.values)
			}
		}
	}
	c.prevKey, c.prevRetried = key, c.attempts > 1
	c.sent, c.attempts = c.sent+1, 0
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
// the test's own, so they may override them), and the first sector of its
// guest's journal (param journal=1000 flush=1: update n writes sector
// journal+n%1000, holding n at byte 16, and flushes before it replies).
type kvMachine struct {
	flags   []string
	journal int64
}

var (
	// simKV is the software machine's kv guest.
	simKV = kvMachine{flags: []string{"--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--param", "journal=1000", "--param", "flush=1"}, journal: 16}
	// kvmKV is the C kv guest on KVM (guests/pure/kvtable.h). Its vCPU
	// polls the network, a busy core per process, so a loaded host gets a
	// longer failure timeout.
	kvmKV = kvMachine{flags: []string{"--machine", "kvm", "--guest", "kv", "--memory", "16M",
		"--param", "journal=1000", "--param", "flush=1", "--failure-timeout", "1s"}, journal: 128}
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
		"--net", "udp:" + udp, "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M",
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
	c := &kvClient{conn: conn, bySeq: map[uint64]string{}, values: map[string]uint64{}, lossy: lossy}
	for n := 1 + rng.Intn(20); n > 0; n-- {
		c.incr(t, 20*time.Second)
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
	c.incr(t, 20*time.Second)
	c.resend = 0
	for n := 0; n < 4; n++ {
		c.incr(t, 20*time.Second)
	}
	// The backup's stderr reaches bout through a pipe: its
	// replies can arrive before its log line does.
	waitFor(t, &bout, "live as primary")
	checkJournal(t, filepath.Join(dir, "disk.img"), machine.journal, c.maxSeq)
	return true
}

// checkJournal checks that the kv guest's journal on the disk image, from
// sector base, holds every update up to last (param journal=1000: update n
// writes a sector at base+n%1000 holding n at byte 16). A FLUSH precedes each reply, so every
// update a reply reported must be on the disk.
func checkJournal(t *testing.T, image string, base int64, last uint64) {
	t.Helper()
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sector := make([]byte, sim.DiskSectorSize)
	for seq := uint64(1); seq <= last; seq++ {
		if _, err := f.ReadAt(sector, (base+int64(seq%1000))*sim.DiskSectorSize); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(sector[16:]); got != seq {
			t.Errorf("the journal sector of update %d holds update %d: a reported update is not on the disk", seq, got)
		}
	}
}

// TestReplayBackupsJoinARunningGuest is FT VMotion through the CLI, as
// real processes: a primary starts alone and accepts backups; a backup
// joins it; the primary is killed and the backup goes live, accepting
// backups in turn; a third process joins it; the second is killed and the
// third goes live. The client's replies stay one machine's throughout.
func TestReplayBackupsJoinARunningGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	dir := t.TempDir()
	udp := freePort(t, "udp")
	accept1, accept2 := freePort(t, "tcp"), freePort(t, "tcp")
	common := append([]string{"--mode", "replay", "--machine", "sim", "--guest", "kv", "--memory", "1M",
		"--net", "udp:" + udp, "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
		"--heartbeat", "20ms", "--failure-timeout", "300ms"}, loopbackTLS(t)...)
	var out1, out2, out3 syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("first:\n%s\nsecond:\n%s\nthird:\n%s", out1.String(), out2.String(), out3.String())
		}
	})
	first := ftckptProcess(t, &out1, append([]string{"--role", "primary", "--accept-backups", accept1}, common...)...)
	ua, _ := net.ResolveUDPAddr("udp", udp)
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &kvClient{conn: conn, bySeq: map[uint64]string{}, values: map[string]uint64{}}
	for i := 0; i < 5; i++ {
		c.incr(t, 20*time.Second) // alone
	}
	second := ftckptProcess(t, &out2, append([]string{"--role", "backup", "--join", accept1, "--accept-backups", accept2}, common...)...)
	waitFor(t, &out1, "a backup attached")
	waitFor(t, &out2, "full checkpoint applied")
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
	ftckptProcess(t, &out3, append([]string{"--role", "backup", "--join", accept2}, common...)...)
	waitFor(t, &out3, "full checkpoint applied")
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
}

// waitFor waits until out contains s.
func waitFor(t *testing.T, out *syncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in:\n%s", s, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
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
	want := `peer's machine is "replay mode on the software machine, 1 vCPU, network, 1048576-byte disk", ours "replay mode on the software machine, 1 vCPU, network"`
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
			waitFor(t, &pout, "smp: round 2 OK")
			time.Sleep(time.Duration(rng.Intn(300)) * time.Millisecond)
			primary.Process.Signal(syscall.SIGKILL)
			primary.Wait()
			if strings.Contains(pout.String(), "continuing alone") {
				t.Fatalf("the primary lost its backup before the kill")
			}
			waitFor(t, &bout, "live as primary")
			// Two rounds completed on the backup after going live.
			for deadline := time.Now().Add(60 * time.Second); len(rounds.FindAllString(bout.String(), -1)) < 2; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the backup completed fewer than 2 rounds in a minute after going live")
				}
			}
			if strings.Contains(bout.String(), "VIOLATION") {
				t.Fatal("the invariant broke on the backup")
			}
		})
	}
}
