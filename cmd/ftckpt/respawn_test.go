package main

import (
	"io"
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

	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestCheckpointRespawnSurvivesKills runs a local pair (`ftckpt --mode
// checkpoint`, no --role: --respawn is the default) of the software
// machine's kv guest and kills whichever process is primary with SIGKILL at
// a random moment under a UDP client's traffic, again and again: each time
// the backup goes live and starts a backup of its own that joins it, with
// no one's help. After every kill the client's replies stay one machine's;
// at the end the disk holds every update a reply reported.
func TestCheckpointRespawnSurvivesKills(t *testing.T) {
	respawnKills(t, checkpointRespawn, simKV, "--epoch", "5ms")
}

// TestKVMCheckpointRespawnSurvivesKills is the same with the C kv guest on a
// 4-vCPU KVM machine.
func TestKVMCheckpointRespawnSurvivesKills(t *testing.T) {
	vmmtest.RequireKVM(t)
	respawnKills(t, checkpointRespawn, kvmKV, "--vcpus", "4", "--epoch", "10ms")
}

// TestReplayRespawnSurvivesKills is TestCheckpointRespawnSurvivesKills in
// replay mode, where no reply is lost.
func TestReplayRespawnSurvivesKills(t *testing.T) {
	respawnKills(t, replayRespawn, simKV)
}

// TestKVMReplayRespawnSurvivesKills is TestReplayRespawnSurvivesKills with
// the C kv guest on KVM.
func TestKVMReplayRespawnSurvivesKills(t *testing.T) {
	vmmtest.RequireKVM(t)
	respawnKills(t, replayRespawn, kvmKV)
}

// TestCheckpointRespawnMirroredDisks is TestCheckpointRespawnSurvivesKills
// with mirrored disks (--disk-mode mirrored): each process has an image of
// its own (a local run's two take turns), which each backup gets by
// pre-copy when it joins and keeps by the checkpoints; no file is shared.
// After the 50 failovers the journal on the last primary's image holds
// every update a reply reported.
func TestCheckpointRespawnMirroredDisks(t *testing.T) {
	respawnKills(t, checkpointRespawn, simKV, "--epoch", "5ms", "--disk-mode", "mirrored")
}

// TestReplayRespawnMirroredDisks is TestCheckpointRespawnMirroredDisks in
// replay mode: the backup writes its replayed guest's writes to its image.
func TestReplayRespawnMirroredDisks(t *testing.T) {
	respawnKills(t, replayRespawn, simKV, "--disk-mode", "mirrored")
}

// TestKVMReplayRespawnMirroredDisks is TestReplayRespawnMirroredDisks with
// the C kv guest on KVM.
func TestKVMReplayRespawnMirroredDisks(t *testing.T) {
	vmmtest.RequireKVM(t)
	respawnKills(t, replayRespawn, kvmKV, "--disk-mode", "mirrored")
}

// TestKVMCheckpointRespawnMirroredDisks is
// TestCheckpointRespawnMirroredDisks with the C kv guest on a 2-vCPU KVM
// machine.
func TestKVMCheckpointRespawnMirroredDisks(t *testing.T) {
	vmmtest.RequireKVM(t)
	respawnKills(t, checkpointRespawn, kvmKV, "--vcpus", "2", "--epoch", "10ms", "--disk-mode", "mirrored")
}

// respawnMode is a mode as a respawn test runs it: its flag, the event a
// backup logs once it protects the guest, and whether replies may be lost
// at a failover.
type respawnMode struct {
	mode      string
	protected string
	lossy     bool
}

var (
	checkpointRespawn = respawnMode{"checkpoint", "full sync committed", true}
	replayRespawn     = respawnMode{"replay", "full checkpoint applied", false}
)

// respawnKillCount is how many primaries a respawn test kills: 50, or
// FTCKPT_KILLS (make chaos KILLS=200; the emulated KVM's run, 3).
func respawnKillCount() int {
	if n, err := strconv.Atoi(os.Getenv("FTCKPT_KILLS")); err == nil && n > 0 {
		return n
	}
	return 50
}

var (
	// firstPrimary and livePrimary are the lines that name a primary's
	// process: the local run's own, and each backup gone live.
	firstPrimary = regexp.MustCompile(`primary (?:running|recording) generation=\d+ .*pid=(\d+)`)
	livePrimary  = regexp.MustCompile(`live as primary, unprotected.*pid=(\d+)`)
	// startedBackup names each backup process a node started.
	startedBackup = regexp.MustCompile(`started a backup process pid=(\d+) `)
)

// respawnKills is the respawn test in mode on machine, with flags.
func respawnKills(t *testing.T, mode respawnMode, machine kvMachine, flags ...string) {
	if testing.Short() {
		t.Skip("-short: a multi-process test")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	dir := t.TempDir()
	udp := freePort(t, "udp")
	args := slices.Concat([]string{"--mode", mode.mode,
		"--net", "udp:" + udp, "--disk", filepath.Join(dir, "disk.img"), "--disk-size", "1M",
		"--arbiter", "disk:" + filepath.Join(dir, "lease"), "--status-every", "0",
		"--heartbeat", "20ms", "--failure-timeout", "300ms"}, flags, machine.flags, loopbackTLS(t))
	var out syncBuffer
	t.Cleanup(func() {
		// Every process the run started, which outlive the ones that
		// started them.
		for _, m := range startedBackup.FindAllStringSubmatch(out.String(), -1) {
			if pid, err := strconv.Atoi(m[1]); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if t.Failed() {
			t.Logf("the processes' output:\n%s", out.String())
		}
	})
	local := processTree(t, &out, args...)

	ua, _ := net.ResolveUDPAddr("udp", udp)
	conn, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := newKVClient(conn, mode.lossy)
	waitForMatch(t, &out, firstPrimary, 1)
	primary, _ := strconv.Atoi(firstPrimary.FindStringSubmatch(out.String())[1])
	from := 0 // where in the output the current primary's life began
	mirrored := slices.Contains(flags, "mirrored")
	kills := respawnKillCount()
	for kill := 1; kill <= kills; kill++ {
		// Protected again: its new backup committed a full sync.
		waitForAfter(t, &out, from, mode.protected)
		for n := 1 + rng.Intn(5); n > 0; n-- {
			c.incr(t, 20*time.Second)
		}
		// A request in flight (incr sends it again), then SIGKILL at a
		// random moment.
		c.send()
		time.Sleep(time.Duration(rng.Intn(5000)) * time.Microsecond)
		if err := syscall.Kill(primary, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: killing the primary, process %d: %v", kill, primary, err)
		}
		if primary == local.Process.Pid {
			local.Wait() // its output is a file: Wait need not wait for its children
		}
		c.resend = 100 * time.Millisecond // the primary is gone: ask again soon
		c.incr(t, 20*time.Second)
		c.resend = 0
		// The new primary's stderr reaches out through a pipe: its
		// replies can arrive before its log line does.
		waitForMatch(t, &out, livePrimary, kill)
		lives := livePrimary.FindAllStringSubmatchIndex(out.String(), -1)
		last := lives[kill-1]
		s := out.String()
		primary, _ = strconv.Atoi(s[last[2]:last[3]])
		from = last[1]
		t.Logf("kill %d: process %d is primary, after %d requests", kill, primary, c.sent)
	}
	for n := 0; n < 4; n++ {
		c.incr(t, 20*time.Second)
	}
	image := filepath.Join(dir, "disk.img")
	if mirrored && !strings.Contains(out.String(), "-byte mirrored disk") {
		t.Fatal("no process says its disk is mirrored")
	}
	if mirrored && kills%2 == 1 {
		image += ".mirror" // the images take turns: the first backup's is the primary's after an odd number of kills
	}
	nodetest.CheckJournal(t, image, machine.machine, c.updates())
}

// processTree starts this binary as `ftckpt args...`, its output, and that
// of every process it starts, which inherit it and may outlive it, going to
// out through a pipe of the test's own (exec's pipe would be closed when
// Wait gives up waiting for the children, and they would die of SIGPIPE).
// The test's end kills it; the caller kills the others.
func processTree(t *testing.T, out *syncBuffer, args ...string) *exec.Cmd {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() { io.Copy(out, r); close(copied) }()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "FTCKPT_TEST_AS_MAIN=1")
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		r.Close() // the children are killed by now, or never will be
		<-copied
	})
	return cmd
}
