package cow

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// mapping returns pages of anonymous memory, every page written (as guest
// memory that was dirtied is), registered for snapshots.
func mapping(t testing.TB, pages int) ([]byte, *Region) {
	t.Helper()
	mem, err := unix.Mmap(-1, 0, pages*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	return mem, registered(t, mem)
}

// hugeMapping is mapping in the host's huge pages where it has them
// (MADV_HUGEPAGE, as guest memory is), aligned to them.
func hugeMapping(t testing.TB, pages int) ([]byte, *Region) {
	t.Helper()
	raw, err := unix.Mmap(-1, 0, pages*PageSize+HugePageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(raw) })
	head := (HugePageSize - int(addressOf(raw)%HugePageSize)) % HugePageSize
	mem := raw[head : head+pages*PageSize]
	if err := unix.Madvise(mem, unix.MADV_HUGEPAGE); err != nil {
		t.Logf("madvise(MADV_HUGEPAGE): %v; in 4 KiB pages", err)
	}
	return mem, registered(t, mem)
}

// registered writes every page of mem (as guest memory that was dirtied
// is) and registers it for snapshots.
func registered(t testing.TB, mem []byte) *Region {
	t.Helper()
	for p := range len(mem) / PageSize {
		stamp(mem, uint64(p), 0)
	}
	r, err := Register(mem)
	if errors.Is(err, ErrUnsupported) {
		t.Skipf("this kernel or sandbox has no userfaultfd write protection: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// stamp fills page p of mem with words saying (p, gen): a page copied at
// the wrong moment shows another generation, a page copied from the wrong
// place another number.
func stamp(mem []byte, p, gen uint64) {
	pg := mem[p*PageSize : (p+1)*PageSize]
	for off := 0; off < PageSize; off += 16 {
		binary.LittleEndian.PutUint64(pg[off:], p)
		binary.LittleEndian.PutUint64(pg[off+8:], gen)
	}
}

// checkStamp fails unless page is stamped (p, gen) throughout.
func checkStamp(t *testing.T, what string, page []byte, p, gen uint64) {
	t.Helper()
	for off := 0; off < PageSize; off += 16 {
		gp, gg := binary.LittleEndian.Uint64(page[off:]), binary.LittleEndian.Uint64(page[off+8:])
		if gp != p || gg != gen {
			t.Fatalf("%s: at byte %d, page %d generation %d; want page %d generation %d", what, off, gp, gg, p, gen)
		}
	}
}

// dirtySet picks pages of a mapping of n pages in runs of 1 to longest,
// the first and last pages included.
func dirtySet(rng *rand.Rand, n, longest int) []uint64 {
	var pfns []uint64
	for p := 0; p < n; {
		l := 1 + rng.IntN(longest)
		if rng.IntN(2) == 0 || p == 0 || p+l >= n {
			for q := p; q < min(p+l, n); q++ {
				pfns = append(pfns, uint64(q))
			}
		}
		p += l + rng.IntN(50)
	}
	return pfns
}

// TestSnapshotHoldsThePagesAsTheyWere takes snapshots of dirty sets while
// writers overwrite pages of the mapping as soon as each snapshot returns
// (in order, like a guest's memory loop, and at random, both inside and
// outside the set): every page of dst must be the page as it was at the
// snapshot, and every write must land. Without the write protection the
// writers outrun the background copier and dst holds their generation.
// In huge pages too, with runs that cover whole ones: the kernel protects
// those as one entry, and splits those covered in part.
func TestSnapshotHoldsThePagesAsTheyWere(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mapping func(testing.TB, int) ([]byte, *Region)
		longest int // run of dirty pages
	}{
		{"4KiB-pages", mapping, 100},
		{"huge-pages", hugeMapping, 3 * HugePageSize / PageSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, r := tc.mapping(t, 4096)
			testSnapshotHoldsThePagesAsTheyWere(t, mem, r, tc.longest)
		})
	}
}

func testSnapshotHoldsThePagesAsTheyWere(t *testing.T, mem []byte, r *Region, longest int) {
	pages := uint64(len(mem) / PageSize)
	rng := rand.New(rand.NewPCG(1, 2))
	var faults uint64
	for gen := uint64(1); gen <= 20; gen++ {
		pfns := dirtySet(rng, int(pages), longest)
		before := make([]uint64, pages) // each page's generation at the snapshot
		for p := range pages {
			before[p] = binary.LittleEndian.Uint64(mem[p*PageSize+8:])
		}
		dst := make([]byte, len(pfns)*PageSize)
		s, err := r.Snapshot(pfns, dst)
		if err != nil {
			t.Fatal(err)
		}
		if gen%2 == 0 {
			s.Start() // the copier races the writers; else Wait starts it after them
		}
		// The writers run on their own threads, as vCPUs do.
		var wg sync.WaitGroup
		for w := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				wr := rand.New(rand.NewPCG(gen, uint64(w)))
				for i := range pages / 3 {
					p := uint64(w)*pages/3 + i // in order, a third each
					if w == 2 {
						p = wr.Uint64N(pages) // at random
					}
					stamp(mem, p, gen)
				}
			}()
		}
		wg.Wait()
		if err := s.Wait(); err != nil {
			t.Fatal(err)
		}
		for i, p := range pfns {
			checkStamp(t, "snapshot page", dst[i*PageSize:(i+1)*PageSize], p, before[p])
		}
		for p := range pages / 3 * 2 { // the in-order writers' pages
			checkStamp(t, "written page", mem[p*PageSize:(p+1)*PageSize], p, gen)
		}
		faults += s.Faults()
	}
	t.Logf("20 snapshots, %d writes waited for a copy", faults)
}

// TestAWriterWaitsOncePerPiece: a writer going through a snapshot's pages
// in order, before the background copier starts, waits once per aligned
// HugePageSize of them, whose pages are copied and unprotected together
// (unprotecting part of a huge page would split it), not once per page or
// per handful.
func TestAWriterWaitsOncePerPiece(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mapping func(testing.TB, int) ([]byte, *Region)
	}{{"4KiB-pages", mapping}, {"huge-pages", hugeMapping}} {
		t.Run(tc.name, func(t *testing.T) {
			const pages = 3 * HugePageSize / PageSize
			mem, r := tc.mapping(t, pages)
			first, last := addressOf(mem)/HugePageSize, (addressOf(mem)+pages*PageSize-1)/HugePageSize
			huge := hugePagesIn(t, mem)
			t.Logf("%d of its 3 huge pages mapped huge", huge)
			pfns := make([]uint64, 0, pages)
			for p := 1; p < pages-1; p++ { // not the first page or the last
				pfns = append(pfns, uint64(p))
			}
			s, err := r.Snapshot(pfns, make([]byte, len(pfns)*PageSize))
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { // on its own thread, as a vCPU
				defer close(done)
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				for p := range uint64(pages) {
					stamp(mem, p, 1)
				}
			}()
			<-done
			if err := s.Wait(); err != nil {
				t.Fatal(err)
			}
			if want := last - first + 1; s.Faults() != want {
				t.Errorf("%d pages over %d huge pages written in order: %d writes waited, want %d", len(pfns), want, s.Faults(), want)
			}
			// Protecting part of a huge page splits it; the one wholly in
			// the snapshot stays huge if it is unprotected whole.
			if after := hugePagesIn(t, mem); huge == 3 && after < 1 {
				t.Errorf("huge pages before the snapshot %d, after %d: the one it covers whole was split", huge, after)
			}
		})
	}
}

// hugePagesIn says how many huge pages of the mapping that holds mem are
// mapped huge.
func hugePagesIn(t *testing.T, mem []byte) int {
	t.Helper()
	m, _ := vmmtest.MappingAt(t, uintptr(addressOf(mem)))
	return int(m.AnonHuge / HugePageSize)
}

// TestSnapshotsOfWritersThatNeverStop takes snapshot after snapshot of
// pages that writers rewrite flat out, as a guest does between pauses:
// the writers stop only for each Snapshot call (as vCPUs stop for a
// pause), and the next snapshot comes as soon as the last is copied. A
// fault is often answered after the background copier has already
// unprotected its page and woken its writer; such a late answer must not
// unprotect the page once the next snapshot has protected it again, or
// that snapshot's copy holds a later write.
func TestSnapshotsOfWritersThatNeverStop(t *testing.T) {
	const pages, writers, rounds = 64, 2, 1000
	// The handler answers late, as on a busy host where its ioctls wait
	// for KVM: the copier overtakes it, and the next snapshot comes while
	// it still holds faults of the last.
	testHookAnswering = func() { time.Sleep(50 * time.Microsecond) }
	// Cleared after the region is closed (cleanups run last first), its
	// fault handler gone.
	t.Cleanup(func() { testHookAnswering = nil })
	mem, r := mapping(t, pages)
	var stopped sync.RWMutex // held by each writer for one write; locked for a Snapshot
	var done atomic.Bool
	var wg sync.WaitGroup
	for w := range uint64(writers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for gen := uint64(1); !done.Load(); gen++ {
				for p := w; p < pages; p += writers { // its own pages, in order
					stopped.RLock()
					binary.LittleEndian.PutUint64(mem[p*PageSize+8:], gen)
					stopped.RUnlock()
				}
			}
		}()
	}
	defer func() { done.Store(true); wg.Wait() }()
	pfns := make([]uint64, pages)
	for p := range pfns {
		pfns[p] = uint64(p)
	}
	want := make([]byte, len(mem))
	dst := make([]byte, len(mem))
	var faults uint64
	for round := range rounds {
		stopped.Lock()
		copy(want, mem)
		s, err := r.Snapshot(pfns, dst)
		stopped.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Wait(); err != nil {
			t.Fatal(err)
		}
		for p := range uint64(pages) {
			if got, was := binary.LittleEndian.Uint64(dst[p*PageSize+8:]), binary.LittleEndian.Uint64(want[p*PageSize+8:]); got != was {
				t.Fatalf("round %d: page %d was copied at generation %d; it was at %d when the snapshot was taken", round, p, got, was)
			}
		}
		faults += s.Faults()
	}
	t.Logf("%d snapshots, %d writes waited for a copy", rounds, faults)
}

// TestSnapshotRefusesBadInput: pages out of order or beyond the mapping
// and a short dst are refused, with nothing protected (a write after the
// refusal does not wait).
func TestSnapshotRefusesBadInput(t *testing.T) {
	mem, r := mapping(t, 64)
	for _, c := range []struct {
		name string
		pfns []uint64
		dst  int
	}{
		{"out of order", []uint64{3, 2}, 2},
		{"repeated", []uint64{3, 3}, 2},
		{"beyond the mapping", []uint64{1, 64}, 2},
		{"short dst", []uint64{1, 2}, 1},
	} {
		if _, err := r.Snapshot(c.pfns, make([]byte, c.dst*PageSize)); err == nil {
			t.Errorf("%s: Snapshot accepted %v", c.name, c.pfns)
		}
	}
	stamp(mem, 3, 1) // would wait forever had a refused snapshot protected it
	s, err := r.Snapshot(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(); err != nil {
		t.Fatal(err)
	}
}
