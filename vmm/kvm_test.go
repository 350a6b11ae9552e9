package vmm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// newGuestMachine is the harness tests and benchmarks share: a machine
// running a bundled guest, closed at the end of the test.
func newGuestMachine(t testing.TB, guest string, vcpus int, params map[string]string) (*Machine, *vmmtest.Console) {
	t.Helper()
	return newGuestMachineIRQ(t, guest, vcpus, true, params)
}

func newGuestMachineIRQ(t testing.TB, guest string, vcpus int, irqchip bool, params map[string]string) (*Machine, *vmmtest.Console) {
	t.Helper()
	vmmtest.RequireKVM(t)
	img, err := guests.Image(guest)
	if err != nil {
		t.Fatal(err)
	}
	con := &vmmtest.Console{}
	m, err := New(Config{VCPUs: vcpus, MemSize: 32 << 20, IRQChip: irqchip, Params: params, Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.LoadBareMetal(img, nil); err != nil {
		t.Fatal(err)
	}
	return m, con
}

// moveToNewMachine pauses m, snapshots it, closes it, and restores and
// starts the snapshot in a new machine (closed at the end of the test).
func moveToNewMachine(t *testing.T, m *Machine) (*Machine, *vmmtest.Console) {
	t.Helper()
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if err := m.WriteSnapshot(&snap); err != nil {
		t.Fatal(err)
	}
	m.Close()
	con := &vmmtest.Console{}
	r, err := Restore(&snap, Config{Console: con}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	return r, con
}

// checkCounts checks that text holds "count N" lines for consecutive N and
// returns the last N. Only whole lines count: a line cut in two at the save
// point ("count 5" of "count 53") is complete only once the restored
// guest's output follows it.
func checkCounts(t testing.TB, text string) int {
	t.Helper()
	last := -1
	whole, _ := cutPartialLine(text)
	for _, line := range strings.Split(whole, "\n") {
		if !strings.HasPrefix(line, "count ") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(line, "count "))
		if err != nil {
			t.Fatalf("garbled line %q in:\n%s", line, text)
		}
		if last >= 0 && n != last+1 {
			t.Fatalf("count %d follows count %d: a number was repeated or skipped", n, last)
		}
		last = n
	}
	return last
}

// cutPartialLine splits text after its last newline.
func cutPartialLine(text string) (whole, partial string) {
	i := strings.LastIndexByte(text, '\n')
	return text[:i+1], text[i+1:]
}

func TestCheckCountsWaitsForAHalfPrintedLine(t *testing.T) {
	before := "count 52\ncount 53\ncount 5"
	if got := checkCounts(t, before); got != 53 {
		t.Errorf("last whole count %d, want 53", got)
	}
	if got := checkCounts(t, before+"4\ncount 55\n"); got != 55 {
		t.Errorf("last count %d, want 55", got)
	}
}

func memoryHash(m *Machine) string {
	sum := sha256.Sum256(m.Memory().Bytes())
	return hex.EncodeToString(sum[:])
}

// TestKVMCounterSurvivesSaveRestoreInAnotherProcess saves a running counter
// guest at a random point and restores it in a new process: the memory hash
// matches at the save point and the output continues with no number
// repeated or skipped.
func TestKVMCounterSurvivesSaveRestoreInAnotherProcess(t *testing.T) {
	m, con := newGuestMachine(t, "counter", 1, map[string]string{"every": "2000"})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`count 3\n`))
	time.Sleep(time.Duration(rand.Intn(300)) * time.Millisecond) // an arbitrary save point
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	before := con.String()
	hash := memoryHash(m)
	snap := filepath.Join(t.TempDir(), "counter.snap")
	f, err := os.Create(snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.WriteSnapshot(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRestoreCounter$", "-test.v")
	cmd.Env = append(os.Environ(), "FTCKPT_TEST_SNAPSHOT="+snap)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("restoring process: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	var restoredHash, after string
	for sc.Scan() {
		line := sc.Text()
		if h, ok := strings.CutPrefix(line, "restored-hash "); ok {
			restoredHash = h
		}
		if c, ok := strings.CutPrefix(line, "console "); ok {
			after, _ = strconv.Unquote(c)
		}
	}
	if restoredHash != hash {
		t.Errorf("memory hash at restore %s, at save %s", restoredHash, hash)
	}
	lastBefore := checkCounts(t, before)
	lastAll := checkCounts(t, before+after)
	if lastAll <= lastBefore {
		t.Errorf("the restored guest printed no new count (last %d):\n%s", lastBefore, after)
	}
}

// TestHelperRestoreCounter is the restoring process of the test above.
func TestHelperRestoreCounter(t *testing.T) {
	snap := os.Getenv("FTCKPT_TEST_SNAPSHOT")
	if snap == "" {
		t.Skip("helper process for TestKVMCounterSurvivesSaveRestoreInAnotherProcess (needs /dev/kvm)")
	}
	f, err := os.Open(snap)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	con := &vmmtest.Console{}
	m, err := Restore(f, Config{Console: con}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	fmt.Printf("restored-hash %s\n", memoryHash(m))
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`(?s)count \d+\n.*count \d+\n.*count \d+\n`))
	m.Pause()
	fmt.Printf("console %q\n", con.String())
}

// TestKVMSMPInvariantAcrossSaveRestore saves a 4-vCPU guest whose vCPUs share
// counters under a spinlock and restores it into a new machine: the guest's
// own check (sum of private counters == shared counter) keeps passing.
func TestKVMSMPInvariantAcrossSaveRestore(t *testing.T) {
	m, con := newGuestMachine(t, "smp", 4, map[string]string{"iters": "200"})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`round 2 OK`))
	r, con2 := moveToNewMachine(t, m)
	con2.WaitFor(t, r, regexp.MustCompile(`(?s)round \d+ OK.*round \d+ OK`))
	if strings.Contains(con.String()+con2.String(), "VIOLATION") {
		t.Fatalf("invariant broken:\n%s\n--- restored ---\n%s", con.String(), con2.String())
	}
}

// TestKVMMachineStateRoundTrip saves a paused machine, restores the state
// into the same machine, and saves again: equal, but for what moves with
// host time while paused and is not state (see StateDiff).
func TestKVMMachineStateRoundTrip(t *testing.T) {
	m, con := newGuestMachine(t, "counter", 2, map[string]string{"every": "1000"})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`count 2\n`))
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	a, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.RestoreState(a); err != nil {
		t.Fatal(err)
	}
	b, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if d, err := StateDiff(a, b); d != "" || err != nil {
		t.Errorf("a save/restore/save round trip changed %s (%v)", d, err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`count 4\n`))
}

// TestKVMPauseIsRaceFree pauses and resumes a 4-vCPU guest many times and checks
// every pause leaves every vCPU parked and the guest consistent.
func TestKVMPauseIsRaceFree(t *testing.T) {
	m, con := newGuestMachine(t, "smp", 4, map[string]string{"iters": "100"})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		if _, err := m.SaveState(); err != nil {
			t.Fatal(err)
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	con.WaitFor(t, m, regexp.MustCompile(`round 1 OK`))
	if strings.Contains(con.String(), "VIOLATION") {
		t.Fatal(con.String())
	}
}

// TestKVMCloseDuringPause closes machines while a pause is under way, as a
// node that crashes while its operator pauses the guest does: Close
// returns, and the pause returns (nil, or that the machine stopped). A
// Close that came after the vCPUs had parked for the pause, before the
// pause saw it, once waited forever for a stop no vCPU would report.
func TestKVMCloseDuringPause(t *testing.T) {
	for i := range 200 {
		m, _ := newGuestMachine(t, "smp", 2, map[string]string{"iters": "1000000"})
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		paused := make(chan error, 1)
		go func() { paused <- m.Pause() }()
		// Close from at once to well after the pause: the pause's own
		// length varies, so some Close lands as the vCPUs park.
		time.Sleep(time.Duration(i%20) * 10 * time.Microsecond)
		closed := make(chan struct{})
		go func() { m.Close(); close(closed) }()
		vmmtest.Closed(t, fmt.Sprintf("Close during pause %d", i), closed)
		if err := vmmtest.Receive(t, "the pause", paused); err != nil && !strings.Contains(err.Error(), "machine stopped") {
			t.Fatalf("pause %d, closed under way: %v", i, err)
		}
	}
}

// BenchmarkPauseResume measures a pause+resume of all vCPUs.
func BenchmarkPauseResume(b *testing.B) {
	for _, n := range []int{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("vcpus=%d", n), func(b *testing.B) {
			m, _ := newGuestMachine(b, "smp", n, map[string]string{"iters": "1000"})
			if err := m.Start(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := m.Pause(); err != nil {
					b.Fatal(err)
				}
				if err := m.Resume(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSaveState measures capturing every component's state of a paused
// machine (vCPUs in parallel on their threads).
func BenchmarkSaveState(b *testing.B) {
	for _, n := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("vcpus=%d", n), func(b *testing.B) {
			m, _ := newGuestMachine(b, "smp", n, nil)
			for i := 0; i < b.N; i++ {
				if _, err := m.SaveState(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestKVMTickGuestTakesTimerInterrupts runs the tick guest (PIT + PIC, sti;hlt)
// with KVM's in-kernel irqchip and with the userspace PIC and PIT, and
// saves and restores the userspace one mid-run.
func TestKVMTickGuestTakesTimerInterrupts(t *testing.T) {
	for _, irqchip := range []bool{true, false} {
		t.Run(fmt.Sprintf("irqchip=%v", irqchip), func(t *testing.T) {
			m, con := newGuestMachineIRQ(t, "tick", 1, irqchip, map[string]string{"hz": "200", "every": "20", "ticks": "100"})
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			con.WaitFor(t, m, regexp.MustCompile(`tick 40\n`))
			r, con2 := moveToNewMachine(t, m)
			status, err := r.Wait()
			if err != nil || status != 0 {
				t.Fatalf("restored tick guest stopped with %d, %v:\n%s", status, err, con2.String())
			}
			if !strings.Contains(con2.String(), "tick 100\n") || !strings.Contains(con2.String(), "unexpected=0") {
				t.Errorf("restored guest did not finish cleanly:\n%s", con2.String())
			}
		})
	}
}
