package dirtylog

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"golang.org/x/sys/unix"
)

// newMemtouch is the harness tests and benchmarks share: a machine loaded
// with the memtouch guest and a tracker for mode, closed at the end.
func newMemtouch(t testing.TB, mode Mode, vcpus int, memSize int64, params map[string]string) (*vmm.Machine, Tracker, *vmmtest.Console) {
	t.Helper()
	vmmtest.RequireKVM(t)
	img, err := guests.Image("memtouch")
	if err != nil {
		t.Fatal(err)
	}
	host, err := ProbeHost()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := RingEntriesFor(mode, memSize, host)
	if err != nil {
		t.Skipf("%v", err)
	}
	if mode == ModeRing {
		// Small rings, so that busy epochs fill them and the ring-full path
		// runs. 1024 entries exceed KVM's reserve (64 + the PML buffer).
		entries = 1024
	}
	con := &vmmtest.Console{}
	m, err := vmm.New(vmm.Config{VCPUs: vcpus, MemSize: memSize, IRQChip: true, DirtyRingEntries: entries, Params: params, Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.LoadBareMetal(img, nil); err != nil {
		t.Fatal(err)
	}
	tr, err := New(m, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return m, tr, con
}

// startLine is memtouch's first line, up to its newline: the guest prints
// a byte per exit while the test polls the console, and a match on part of
// the line would read "base=0x40" out of "base=0x400000".
var startLine = regexp.MustCompile(`memtouch: start ws=(\d+) .* base=0x([0-9a-f]+)\n`)

// memtouchWrites models one writer of memtouch in mode=small: the vCPU
// that rewrites the slice of ws pages from working-set page first, dirty
// pages a pass (its share). It writes its pages one at a time: write k
// (k = 0, 1, ...) goes to page first + k mod ws, in pass k/dirty+1, as two
// stores to that page: page[0] = the pass, then page[1] = the page's
// working-set index. So the slice's heads (each page's first two words)
// are a function of the number of writes made, and each write changes its
// page's head (a page's writes are ws >= dirty writes apart, in different
// passes).
type memtouchWrites struct{ first, ws, dirty uint64 }

// memtouchWriters models memtouch's writers as the guest splits the work:
// writer c rewrites pages [ws*c/writers, ws*(c+1)/writers), its share of
// dirty the difference of the same split.
func memtouchWriters(ws, dirty, writers uint64) []memtouchWrites {
	out := make([]memtouchWrites, writers)
	for c := range writers {
		first := ws * c / writers
		out[c] = memtouchWrites{first: first, ws: ws*(c+1)/writers - first, dirty: dirty*(c+1)/writers - dirty*c/writers}
	}
	return out
}

// stamp is what write k stores in page[0].
func (w memtouchWrites) stamp(k uint64) uint64 { return k/w.dirty + 1 }

// head is the head of the slice's page i after the first n writes.
func (w memtouchWrites) head(i, n uint64) [2]uint64 {
	if i >= n {
		return [2]uint64{}
	}
	last := i + (n-1-i)/w.ws*w.ws // the last write to page i before write n
	return [2]uint64{w.stamp(last), w.first + i}
}

// slice is the writer's part of the working set's heads.
func (w memtouchWrites) slice(heads [][2]uint64) [][2]uint64 { return heads[w.first : w.first+w.ws] }

// done counts the writes the slice's heads show made, starting from from (a count they
// showed before): write k is made when page k mod ws holds its stamp or a
// later one. In a state memtouch left, writes before the count are made and
// none after, so it is found by bisection, up to the first write whose
// stamp no page holds: an epoch can hold millions of writes (memtouch runs
// flat out once its whole working set is writable; one long epoch in the
// emulated KVM held 18 million). It checks every head against that count.
// A pause may split one write, the last: its page[0] is stored and its
// page[1] not yet, which shows only on the page's first write (page[1]
// still 0).
func (w memtouchWrites) done(heads [][2]uint64, from uint64) (uint64, error) {
	var top uint64
	for _, h := range heads {
		top = max(top, h[0])
	}
	if top > 1<<40 {
		return 0, fmt.Errorf("a working-set page holds stamp %d: more passes than memtouch can make", top)
	}
	end := max(top*w.dirty, from) // stamp(top*dirty) is top+1: not made
	n := from + uint64(sort.Search(int(end-from), func(j int) bool {
		k := from + uint64(j)
		return heads[k%w.ws][0] < w.stamp(k)
	}))
	for i, got := range heads {
		want := w.head(uint64(i), n)
		split := n > 0 && uint64(i) == (n-1)%w.ws && got == [2]uint64{want[0], 0}
		if got != want && !split {
			return 0, fmt.Errorf("working-set page %d holds (%d, %d) where memtouch leaves (%d, %d) after %d writes", w.first+uint64(i), got[0], got[1], want[0], want[1], n)
		}
	}
	return n, nil
}

// heads reads the first two words of each working-set page.
func heads(m *vmm.Machine, first, n uint64) [][2]uint64 {
	out := make([][2]uint64, n)
	for i := range out {
		p := m.Memory().Page(first + uint64(i))
		out[i] = [2]uint64{binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:])}
	}
	return out
}

func TestMemtouchWritesModel(t *testing.T) {
	w := memtouchWrites{ws: 5, dirty: 2}
	// After 7 writes: pages 0-4 got writes 0-4 (passes 1,1,2,2,3), then
	// pages 0 and 1 got writes 5 and 6 (passes 3 and 4).
	at7 := [][2]uint64{{3, 0}, {4, 1}, {2, 2}, {2, 3}, {3, 4}}
	if n, err := w.done(at7, 0); n != 7 || err != nil {
		t.Fatalf("done(after 7 writes) = %d, %v", n, err)
	}
	if n, err := w.done(at7, 7); n != 7 || err != nil {
		t.Fatalf("done(after 7 writes, from 7) = %d, %v", n, err)
	}
	// Write 3 split by the pause: page 3 has its stamp, not yet its index.
	split := [][2]uint64{{1, 0}, {1, 1}, {2, 2}, {2, 0}, {0, 0}}
	if n, err := w.done(split, 0); n != 4 || err != nil {
		t.Fatalf("done(write 3 split) = %d, %v", n, err)
	}
	// Many more writes than a linear count would go through.
	const many = 40_000_003
	after := make([][2]uint64, w.ws)
	for i := range after {
		after[i] = w.head(uint64(i), many)
	}
	if n, err := w.done(after, 7); n != many || err != nil {
		t.Fatalf("done(after %d writes, from 7) = %d, %v", uint64(many), n, err)
	}
	// Two writers split ten pages and five writes a pass; the second's
	// heads name working-set pages 5 to 9, and one that names page 1 is not
	// its.
	two := memtouchWriters(10, 5, 2)
	if want := []memtouchWrites{{0, 5, 2}, {5, 5, 3}}; !slices.Equal(two, want) {
		t.Fatalf("memtouchWriters(10, 5, 2) = %v, want %v", two, want)
	}
	second := [][2]uint64{{1, 5}, {1, 6}, {1, 7}, {2, 8}, {0, 0}}
	if n, err := two[1].done(second, 0); n != 4 || err != nil {
		t.Fatalf("second writer: done(after 4 writes) = %d, %v", n, err)
	}
	if n, err := two[1].done([][2]uint64{{1, 1}, {0, 0}, {0, 0}, {0, 0}, {0, 0}}, 0); err == nil {
		t.Errorf("second writer: done(a head naming page 1) = %d, want an error", n)
	}
	// A page missing a write, or holding what memtouch never writes, is
	// not memtouch's working set.
	for _, bad := range [][][2]uint64{
		{{3, 0}, {4, 1}, {1, 2}, {2, 3}, {3, 4}},
		{{1, 0}, {1, 1}, {0, 0}, {2, 3}, {0, 0}},
		{{1, 7}, {1, 1}, {0, 0}, {0, 0}, {0, 0}},
		{{1 << 62, 0}, {1, 1}, {0, 0}, {0, 0}, {0, 0}},
	} {
		if n, err := w.done(bad, 0); err == nil {
			t.Errorf("done(%v) = %d, want an error", bad, n)
		}
	}
}

func TestHarvestIsExactOnKVM(t *testing.T) {
	for _, mode := range []Mode{ModeBitmap, ModeRing} {
		for _, vcpus := range []int{1, 4} {
			t.Run(fmt.Sprintf("%v/vcpus=%d", mode, vcpus), func(t *testing.T) { testHarvestIsExact(t, mode, vcpus, false) })
		}
		t.Run(fmt.Sprintf("%v/vcpus=2/signals", mode), func(t *testing.T) { testHarvestIsExact(t, mode, 2, true) })
	}
}

// stormSignals sends signals to the calling goroutine's thread, which it
// locks, and to the process, until stop is called: a signal pending in a
// harvest's KVM_RESET_DIRTY_RINGS stops the reset early (recent kernels), and
// one sent to the process may land on a vCPU thread collecting its full
// ring. The signal is the vCPUs' kick, which every thread catches and
// ignores.
func stormSignals(t *testing.T) (stop func()) {
	runtime.LockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-quit:
				return
			default:
			}
			var err error
			if i%2 == 0 {
				err = unix.Tgkill(pid, tid, unix.SIGUSR1)
			} else {
				err = unix.Kill(pid, unix.SIGUSR1)
			}
			if err != nil {
				t.Error(err)
				return
			}
			runtime.Gosched()
		}
	}()
	return func() {
		close(quit)
		<-done
		runtime.UnlockOSThread()
	}
}

// testHarvestIsExact runs memtouch for epochs, every vCPU writing its
// slice of the working set (each into its own dirty ring, with rings), and
// checks each harvest against the writes memory shows the guest made in
// the epoch.
//
// A page written in the epoch and not reported fails the test: that is a
// backup silently missing a change. A page reported and not written fails
// it too, unless it is the write a pause split, and there is at most one
// such write at each end of an epoch for each writer, because a writer
// writes one page at a time (two stores to the same page):
//
//   - at the epoch's end, the next write: KVM logs a page when it handles
//     the write fault, and the pause can take the vCPU out after that and
//     before the store retires (seen on AMD-V KVM: RIP at the store). The
//     store retires, faults again and is reported again next epoch.
//   - at its start, the previous epoch's last write: the pause fell between
//     its two stores, and the second one (page[1], the same value every
//     pass after the first) is a write in this epoch (seen on kvm-pvm,
//     which logs every store it emulates: RIP after the first store).
//
// Both are counted and logged. So are epochs in which a dirty ring
// overflowed (KVM logged more than the ring holds, see collectStopped): the
// tracker must then report every page, and nothing else is checked of that
// harvest. A timing decides nothing here: the sleep only lets the guest
// run, and every check reads guest memory or the tracker's counters.
func testHarvestIsExact(t *testing.T, mode Mode, vcpus int, signals bool) {
	const ws, dirty = 2048, 37
	m, tr, con := newMemtouch(t, mode, vcpus, 32<<20, map[string]string{
		"ws": strconv.Itoa(ws), "dirty": strconv.Itoa(dirty), "mode": "small", "every": "1000000",
		"writers": strconv.Itoa(vcpus)})
	if signals {
		defer stormSignals(t)()
	}
	pages := m.Memory().Pages()
	dst := machine.NewBitmap(pages)
	// The loader's writes are the first harvest.
	if _, err := tr.Harvest(dst); err != nil {
		t.Fatal(err)
	}
	if dst.Count() == 0 {
		t.Fatal("the first harvest misses the loader's writes")
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	s := con.WaitFor(t, m, startLine)
	gotWS, _ := strconv.ParseUint(s[1], 10, 64)
	base, _ := strconv.ParseUint(s[2], 16, 64)
	if gotWS != ws || base%vmm.PageSize != 0 || base+ws*vmm.PageSize > 3<<30 {
		t.Fatalf("memtouch started with ws=%d base=%#x", gotWS, base)
	}
	first := base / vmm.PageSize // below 3 GiB, GPA = RAM offset
	devPage := first + ws + 10   // the guest never touches it
	devEpoch := -1
	writers := memtouchWriters(ws, dirty, uint64(vcpus))
	// Epoch 0 ends here: its harvest is not checked, the heads read while
	// paused are the baseline.
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Harvest(dst); err != nil {
		t.Fatal(err)
	}
	prev := heads(m, first, ws)
	done := make([]uint64, len(writers)) // each writer's writes made
	for c, w := range writers {
		var err error
		if done[c], err = w.done(w.slice(prev), 0); err != nil {
			t.Fatalf("epoch 0, writer %d: %v", c, err)
		}
	}
	// maxEpoch is the most pages one writer (one vCPU's ring) dirtied in an
	// epoch.
	written, maxEpoch, inFlight, split := uint64(0), uint64(0), 0, 0
	overflows := func() int { return 0 }
	if rt, ok := tr.(*ringTracker); ok {
		overflows = func() int {
			rt.mu.Lock()
			defer rt.mu.Unlock()
			return rt.overflows
		}
	}
	lostEpochs, lostBefore := 0, overflows()
	countedSum := 0
	for e := 1; e <= 200 && (written < 4*ws || e <= 4); e++ {
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // lets the guest run; decides nothing
		// While the guest runs: the count must neither miss what was
		// dirtied so far nor take it from the harvest (checked below).
		counted, err := tr.DirtySoFar()
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		countedSum += counted
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		dst.Clear()
		reports, err := tr.Harvest(dst)
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		if counted > reports {
			t.Fatalf("epoch %d: %d pages counted dirty while the guest ran, %d harvested after", e, counted, reports)
		}
		cur := heads(m, first, ws)
		now := make([]uint64, len(writers))
		for c, w := range writers {
			if now[c], err = w.done(w.slice(cur), done[c]); err != nil {
				t.Fatalf("epoch %d, writer %d: %v", e, c, err)
			}
		}
		lost := overflows() != lostBefore
		lostBefore = overflows()
		if lost {
			if dst.Count() != int(pages) {
				t.Fatalf("epoch %d: a dirty ring overflowed and %d of %d pages were reported", e, dst.Count(), pages)
			}
			lostEpochs++
		}
		for c, w := range writers {
			for i := range w.ws {
				page := w.first + i
				changed := cur[page] != prev[page]
				reported := dst.Has(first + page)
				switch {
				case changed && !reported:
					t.Fatalf("epoch %d: working-set page %d was written (%v → %v) and not reported dirty", e, page, prev[page], cur[page])
				case changed || !reported || lost:
				case i == now[c]%w.ws:
					inFlight++ // write now: its fault was logged, its store is next epoch's
				case done[c] > 0 && i == (done[c]-1)%w.ws:
					split++ // write done-1: its second store is this epoch's
				default:
					t.Fatalf("epoch %d: working-set page %d was reported dirty and memtouch did not write it (writer %d's writes were %d to %d, on pages %d to %d)",
						e, page, c, done[c], now[c], w.first+done[c]%w.ws, w.first+now[c]%w.ws)
				}
			}
			written += now[c] - done[c]
			maxEpoch = max(maxEpoch, min(now[c]-done[c], w.ws))
		}
		// A device write while paused is in the next harvest and not the one
		// after.
		switch {
		case lost:
		case devEpoch == e-1 && !dst.Has(devPage):
			t.Fatalf("epoch %d: the device write made before it was not harvested", e)
		case devEpoch == e-2 && dst.Has(devPage):
			t.Fatalf("epoch %d: the device write of epoch %d was harvested again", e, e-2)
		case devEpoch < 0 && dst.Has(devPage):
			t.Fatalf("epoch %d: page %d harvested before anything wrote it", e, devPage)
		}
		if e == 2 {
			if _, err := m.Memory().WriteAt([]byte("device"), int64(devPage*vmm.PageSize+100)); err != nil {
				t.Fatal(err)
			}
			devEpoch = e
		}
		if e == 3 && mode == ModeRing {
			// What a harvest after an overflow does: the epochs after it
			// must still see every write.
			if err := rearmDirtyLog(m.VMFd(), m.Memory()); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("epoch %d: memtouch's writers wrote %v pages, %d pages harvested", e, diff(now, done), dst.Count())
		prev, done = cur, now
	}
	if written == 0 {
		t.Fatal("the guest wrote nothing in 200 epochs")
	}
	if countedSum == 0 {
		t.Fatalf("%d pages written, and DirtySoFar counted none while the guest ran", written)
	}
	t.Logf("%d pages written; reported though not yet written or already written, as the pause split their write: %d in flight, %d split between two stores; %d epochs with a dirty ring overflowed (all reported)",
		written, inFlight, split, lostEpochs)
	if rt, ok := tr.(*ringTracker); ok {
		rt.mu.Lock()
		fulls, earlyStops := rt.fulls, rt.earlyStops
		rt.mu.Unlock()
		t.Logf("%d ring-full exits; %d resets of the rings stopped early (by a signal)", fulls, earlyStops)
		if fulls == 0 && maxEpoch >= 1024 {
			t.Fatalf("a writer dirtied %d pages in an epoch, into its vCPU's 1024-entry ring, and no ring-full exit was collected", maxEpoch)
		}
	}
}

// diff is a - b, element by element.
func diff(a, b []uint64) []uint64 {
	out := make([]uint64, len(a))
	for i := range a {
		out[i] = a[i] - b[i]
	}
	return out
}

// TestTrackerRefusesTheWrongMachineOnKVM: a ring tracker needs a machine built
// with rings, a bitmap tracker one without.
func TestTrackerRefusesTheWrongMachineOnKVM(t *testing.T) {
	vmmtest.RequireKVM(t)
	m, err := vmm.New(vmm.Config{VCPUs: 1, MemSize: 32 << 20, IRQChip: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := New(m, ModeRing); err == nil {
		t.Fatal("a ring tracker was made on a machine without rings")
	}
}
