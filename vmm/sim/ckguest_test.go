package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

var _ machine.Runner = (*CheckpointGuest)(nil)

// ckDevices are a CheckpointGuest's devices in the tests: frames go to a
// list (or to send, if set), the disk is a byte slice, and the first
// refuse outputs are refused with vmm.ErrOutputFull.
type ckDevices struct {
	mu      sync.Mutex
	frames  [][]byte
	disk    []byte
	refuse  atomic.Int64
	refused atomic.Int64
	send    func([]byte) error
	cond    *sync.Cond
}

func newCKDevices() *ckDevices {
	d := &ckDevices{disk: make([]byte, 1<<20)}
	d.cond = sync.NewCond(&d.mu)
	return d
}

func (d *ckDevices) ReadDisk(p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.disk[off:])
	return nil
}

func (d *ckDevices) WriteDisk(p []byte, off int64) error {
	if d.refuse.Add(-1) >= 0 {
		d.refused.Add(1)
		return vmm.ErrOutputFull
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.disk[off:], p)
	return nil
}

func (d *ckDevices) SendFrame(f []byte) error {
	if d.refuse.Add(-1) >= 0 {
		d.refused.Add(1)
		return vmm.ErrOutputFull
	}
	if d.send != nil {
		return d.send(f)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.frames = append(d.frames, bytes.Clone(f))
	d.cond.Broadcast()
	return nil
}

func (d *ckDevices) Console([]byte) {}

func (d *ckDevices) seen() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][]byte(nil), d.frames...)
}

// waitFrames waits until n frames were sent.
func (d *ckDevices) waitFrames(t *testing.T, n int) {
	t.Helper()
	vmmtest.WaitUntil(t, fmt.Sprintf("%d frames sent", n), func() bool { return len(d.seen()) >= n })
}

// waitMore waits until more than n frames were sent or until passes, and
// says whether they were.
func (d *ckDevices) waitMore(n int, until time.Time) bool {
	wake := time.AfterFunc(time.Until(until), func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer wake.Stop()
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.frames) <= n && time.Now().Before(until) {
		d.cond.Wait()
	}
	return len(d.frames) > n
}

func newCKGuest(t *testing.T, guest string, devs Devices, params ...Param) *CheckpointGuest {
	t.Helper()
	g, err := NewCheckpointGuest(guest, 64, devs, params...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// incrAll sends n INCR requests, one at a time, each resent every 50 ms
// (that paces the resends; it decides nothing) until the device has one
// more frame.
func incrAll(t *testing.T, g *CheckpointGuest, d *ckDevices, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		have := len(d.seen())
		deadline := time.Now().Add(vmmtest.Bound)
		for len(d.seen()) == have {
			if time.Now().After(deadline) {
				t.Fatalf("no reply after %d", have)
			}
			g.Receive(KVRequest("INCR", "k"))
			d.waitMore(have, time.Now().Add(50*time.Millisecond))
		}
	}
}

// checkIncrReplies checks replies to "INCR k" only: numbered 1, 2, ...
// without a gap or repeat, each the count of requests so far.
func checkIncrReplies(t *testing.T, frames [][]byte) {
	t.Helper()
	for i, f := range frames {
		r, err := ParseKVReply(f)
		if err != nil {
			t.Fatal(err)
		}
		want := strconv.Itoa(i + 1)
		if r.Seq != uint64(i+1) || r.Status != "VALUE" || r.Value != want {
			t.Fatalf("reply %d is %q, want %d VALUE %s", i, f, i+1, want)
		}
	}
}

// TestHarvestSeesEveryWrite pauses running guests at random moments and
// checks that every page whose contents changed since the previous pause
// is in the harvest: the guest's writes (tick's work area, its stack and
// history) and its devices' (received frames, disk reads into the kv
// table).
func TestHarvestSeesEveryWrite(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for _, guest := range []string{"tick", "kv"} {
		t.Run(guest, func(t *testing.T) {
			d := newCKDevices()
			var params []Param
			if guest == "tick" {
				params = []Param{{"period_ns", 50_000}, {"work", 500}, {"every", 1}}
			}
			g := newCKGuest(t, guest, d, params...)
			pages := uint64(len(g.Memory()) / PageSize)
			shadow := bytes.Clone(g.Memory())
			if err := g.Start(); err != nil {
				t.Fatal(err)
			}
			dirty := machine.NewBitmap(pages)
			changedPages := 0
			for round := 0; round < 200; round++ {
				if guest == "kv" {
					g.Receive(KVRequest("INCR", fmt.Sprintf("k%d", rng.Intn(40))))
				}
				time.Sleep(time.Duration(rng.Intn(300)) * time.Microsecond) // a random moment to pause at: the test's point
				if err := g.Pause(); err != nil {
					t.Fatal(err)
				}
				dirty.Clear()
				if err := g.Harvest(dirty); err != nil {
					t.Fatal(err)
				}
				mem := g.Memory()
				for p := uint64(0); p < pages; p++ {
					a, b := mem[p*PageSize:(p+1)*PageSize], shadow[p*PageSize:(p+1)*PageSize]
					if !bytes.Equal(a, b) {
						changedPages++
						if !dirty.Has(p) {
							t.Fatalf("round %d: page %d changed and was not harvested", round, p)
						}
						copy(b, a)
					}
				}
				if err := g.Resume(); err != nil {
					t.Fatal(err)
				}
			}
			if changedPages < 200 || len(d.seen()) == 0 {
				t.Fatalf("%d page changes and %d frames in 200 rounds: the guest hardly ran", changedPages, len(d.seen()))
			}
			if err := g.Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPauseStopsTheGuest checks a paused guest neither executes nor
// writes, and that the machine may then be read: the race detector sees
// any access of the vCPU goroutine that Pause did not order.
func TestPauseStopsTheGuest(t *testing.T) {
	d := newCKDevices()
	g := newCKGuest(t, "tick", d, Param{"period_ns", 20_000}, Param{"work", 100_000}, Param{"every", 1})
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitFrames(t, 1)
	for i := 0; i < 50; i++ {
		if err := g.Pause(); err != nil {
			t.Fatal(err)
		}
		mem, n := bytes.Clone(g.Memory()), g.Instructions()
		st, err := g.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Microsecond) // time for a guest that ran on to show it: the test's point
		st2, _ := g.SaveState()
		if !bytes.Equal(mem, g.Memory()) || g.Instructions() != n || !bytes.Equal(st[14:len(st)-4], st2[14:len(st2)-4]) {
			t.Fatalf("pause %d: the guest ran on", i)
		}
		if err := g.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Resume(); err == nil {
		t.Error("Resume of a running guest accepted")
	}
	if _, err := g.SaveState(); err == nil {
		t.Error("SaveState of a running guest accepted")
	}
	if err := g.Harvest(machine.NewBitmap(64)); err == nil {
		t.Error("Harvest of a running guest accepted")
	}
	if err := g.Start(); err == nil {
		t.Error("a second Start accepted")
	}
}

// TestCopyLiveIsAPage copies pages while the guest runs and paused: each
// copy is the page as it was at some instruction boundary, which for the
// tick guest's history page means its ticks are consecutive.
func TestCopyLiveIsAPage(t *testing.T) {
	d := newCKDevices()
	g := newCKGuest(t, "tick", d, Param{"period_ns", 20_000}, Param{"work", 50}, Param{"every", 1})
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitFrames(t, 3)
	dst := make([]byte, PageSize)
	for i := 0; i < 500; i++ {
		pfn := uint64(i % 64)
		g.CopyLive(dst, pfn)
		if i%50 == 0 {
			g.Pause()
			g.CopyLive(dst, pfn)
			if !bytes.Equal(dst, g.Memory()[pfn*PageSize:(pfn+1)*PageSize]) {
				t.Fatalf("CopyLive of paused page %d differs from memory", pfn)
			}
			g.Resume()
		}
	}
	if err := g.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestRefusedOutputsAreRetried refuses the kv guest's outputs many times:
// every reply still comes exactly once, in order; and a guest saved while
// a reply is refused sends it, once, after its state is restored into
// another guest.
func TestRefusedOutputsAreRetried(t *testing.T) {
	d := newCKDevices()
	g := newCKGuest(t, "kv", d)
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		d.refuse.Store(int64(i % 4))
		incrAll(t, g, d, 1)
	}
	if d.refused.Load() == 0 {
		t.Fatal("nothing was refused")
	}
	checkIncrReplies(t, d.seen())

	// Refuse everything, send a request, and save the guest while its
	// reply waits.
	d.refuse.Store(1 << 40)
	before := d.refused.Load()
	g.Receive(KVRequest("INCR", "k"))
	vmmtest.WaitUntil(t, "the reply to be tried 3 times", func() bool { return d.refused.Load() >= before+3 })
	if err := g.Pause(); err != nil {
		t.Fatal(err)
	}
	st, err := g.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	d2 := newCKDevices()
	d2.frames = d.seen()
	b := newCKGuest(t, "kv", d2)
	copy(b.Memory(), g.Memory())
	if err := b.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	d2.waitFrames(t, 21)
	incrAll(t, b, d2, 5)
	checkIncrReplies(t, d2.seen())
}

// TestStateRejectsDamage restores damaged states: each is refused and the
// guest is unchanged.
func TestStateRejectsDamage(t *testing.T) {
	d := newCKDevices()
	g := newCKGuest(t, "kv", d)
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	incrAll(t, g, d, 3)
	g.Pause()
	st, err := g.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	fresh := newCKGuest(t, "kv", newCKDevices())
	want, _ := fresh.SaveState()
	for i := range st {
		bad := bytes.Clone(st)
		bad[i] ^= 0x10
		if err := fresh.RestoreState(bad); err == nil {
			t.Fatalf("a state with byte %d flipped was accepted", i)
		}
	}
	for n := 0; n < len(st); n++ {
		if err := fresh.RestoreState(st[:n]); err == nil {
			t.Fatalf("a state cut to %d bytes was accepted", n)
		}
	}
	if got, _ := fresh.SaveState(); !bytes.Equal(got, want) {
		t.Fatal("a refused state changed the guest")
	}
	if err := fresh.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	// Not started, its clock stands still: the state is the same bytes,
	// guest time included.
	if got, _ := fresh.SaveState(); !bytes.Equal(got, st) {
		t.Fatal("save, restore, save: a different state")
	}
}

// TestClockContinuesFromState restores a tick guest into another: the
// restored guest's clock starts where the saved one stood, so its frames
// carry times after every frame before the save.
func TestClockContinuesFromState(t *testing.T) {
	d := newCKDevices()
	g := newCKGuest(t, "tick", d, Param{"period_ns", 100_000}, Param{"work", 10}, Param{"every", 1})
	if err := g.Start(); err != nil {
		t.Fatal(err)
	}
	d.waitFrames(t, 20)
	g.Pause()
	st, _ := g.SaveState()
	sent := d.seen()
	last, err := ParseTickFrame(sent[len(sent)-1])
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	d2 := newCKDevices()
	b := newCKGuest(t, "tick", d2)
	copy(b.Memory(), g.Memory())
	if err := b.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	d2.waitFrames(t, 5)
	for _, f := range d2.seen() {
		tf, err := ParseTickFrame(f)
		if err != nil {
			t.Fatal(err)
		}
		if tf.Ticks <= last.Ticks || tf.Clock <= last.Clock {
			t.Fatalf("after the restore %+v, before it %+v", tf, last)
		}
	}
}

// TestGuestStops checks Stopped and Err: a guest that powers off stops
// without an error, one that faults with it, and Close stops the rest.
func TestGuestStops(t *testing.T) {
	d := newCKDevices()
	g := newCKGuest(t, "tick", d, Param{"period_ns", 10_000}, Param{"work", 10}, Param{"ticks", 30})
	g.Start()
	select {
	case <-g.Stopped():
	case <-time.After(20 * time.Second):
		t.Fatal("the guest did not power off")
	}
	if err := g.Err(); err != nil {
		t.Fatalf("powered off with %v", err)
	}
	g.Pause() // a stopped guest pauses at once
	if _, err := g.SaveState(); err != nil {
		t.Fatal(err)
	}

	p, err := Assemble(Prelude + "\t.org ENTRY\nstart:\n\tnop\n\t.quad 0xffffffffffffffff\n")
	if err != nil {
		t.Fatal(err)
	}
	f := newCheckpointGuest(newCKDevices())
	if f.m, err = NewProgram(p, 4, ckEnv{f}); err != nil {
		t.Fatal(err)
	}
	f.Start()
	<-f.Stopped()
	var fault *Fault
	if err := f.Err(); !errors.As(err, &fault) {
		t.Fatalf("a faulting guest stopped with %v", err)
	}

	h := newCKGuest(t, "kv", newCKDevices())
	h.Start()
	h.Close()
	select {
	case <-h.Stopped():
	default:
		t.Fatal("Close returned before the guest stopped")
	}
}
