package dirtylog

import (
	"fmt"
	"math/rand"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

var benchMems = []int64{256 << 20, 4 << 30, 64 << 30}
var benchDirty = []int{10, 1000, 100000}

// sparse returns a slot log of pages pages with dirty random pages set.
func sparse(pages uint64, dirty int) []uint64 {
	r := rand.New(rand.NewSource(4))
	b := machine.NewBitmap(pages)
	for n := 0; n < dirty; {
		p := uint64(r.Int63n(int64(pages)))
		if !b.Has(p) {
			b.Set(p)
			n++
		}
	}
	return b.Words()
}

// BenchmarkBitmapScan is the userspace part of a bitmap harvest after
// KVM_GET_DIRTY_LOG: place the slot's log among RAM pages, count, pick the
// CLEAR_DIRTY_LOG chunks and walk the runs. Its floor is one plain pass over
// the same words (BenchmarkWordLoop).
func BenchmarkBitmapScan(b *testing.B) {
	for _, mem := range benchMems {
		for _, dirty := range benchDirty {
			pages := uint64(mem) / 4096
			if uint64(dirty) > pages/2 {
				continue // 100,000 pages do not fit in 256 MiB
			}
			log := sparse(pages, dirty)
			got := machine.NewBitmap(pages)
			b.Run(fmt.Sprintf("mem=%dMiB/dirty=%d", mem>>20, dirty), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					got.Clear()
					orShifted(got.Words(), log, 0, pages)
					runs := 0
					for range got.Runs() {
						runs++
					}
					if got.Count() != dirty || len(clearChunks(log, pages)) == 0 || runs == 0 {
						b.Fatal("lost pages")
					}
				}
			})
		}
	}
}

var sink uint64

func BenchmarkWordLoop(b *testing.B) {
	for _, mem := range benchMems {
		words := make([]uint64, uint64(mem)/4096/64)
		b.Run(fmt.Sprintf("mem=%dMiB", mem>>20), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				var s uint64
				for _, w := range words {
					s |= w
				}
				sink += s
			}
		})
	}
}

// BenchmarkRingCollect is the userspace part of a ring harvest: collect
// `dirty` published entries into a RAM bitmap (4 GiB and 64 GiB, to show the
// memory size does not matter). Each iteration re-publishes the entries
// first; BenchmarkRingRearm times that alone, as the floor.
func BenchmarkRingCollect(b *testing.B) {
	for _, mem := range []int64{4 << 30, 64 << 30} {
		for _, dirty := range benchDirty {
			ring, slots := fakeRing(dirty, mem)
			dst := machine.NewBitmap(uint64(mem) / 4096)
			b.Run(fmt.Sprintf("mem=%dMiB/dirty=%d", mem>>20, dirty), func(b *testing.B) {
				fetch := uint32(0)
				for i := 0; i < b.N; i++ {
					rearm(ring, dirty, fetch)
					if n, err := collectRing(ring, &fetch, slots, dst); n != dirty || err != nil {
						b.Fatalf("collected %d of %d: %v", n, dirty, err)
					}
				}
			})
		}
	}
}

func BenchmarkRingRearm(b *testing.B) {
	for _, dirty := range benchDirty {
		ring, _ := fakeRing(dirty, 4<<30)
		b.Run(fmt.Sprintf("dirty=%d", dirty), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				rearm(ring, dirty, uint32(i*dirty))
			}
		})
	}
}

// fakeRing is a ring of the next power of two ≥ dirty entries holding random
// pages of a machine of mem bytes (one slot, as below 3 GiB).
func fakeRing(dirty int, mem int64) ([]kvmapi.DirtyGFN, []slotPages) {
	size := 1
	for size < dirty {
		size *= 2
	}
	pages := uint64(mem) / 4096
	r := rand.New(rand.NewSource(5))
	ring := make([]kvmapi.DirtyGFN, size)
	for i := range ring {
		ring[i].Offset = uint64(r.Int63n(int64(pages)))
	}
	return ring, []slotPages{{id: 0, first: 0, pages: pages}}
}

func rearm(ring []kvmapi.DirtyGFN, n int, from uint32) {
	mask := uint32(len(ring) - 1)
	for i := 0; i < n; i++ {
		ring[(from+uint32(i))&mask].Flags = kvmapi.KVM_DIRTY_GFN_F_DIRTY
	}
}

// BenchmarkKVMHarvest times Harvest on KVM after the guest really dirtied
// the pages the row names: memtouch rewrites a working set of `dirty`
// pages, pass after pass, and each epoch lasts until it has made a whole
// pass since the guest was resumed (so every page of the set was written in
// the epoch), then the machine pauses and harvests. A row reports the
// harvest's p50 and p99 (harvest-µs), the pages it reported (pages/harvest:
// the working set, plus what the VMM wrote) and what collecting full rings
// meanwhile cost the vCPUs (ring-fulls/epoch; the ring is the size ftckpt
// uses, DefaultRingEntries). ns/op is a whole epoch, most of it the guest
// writing: one VM exit per page, as each first write faults.
func BenchmarkKVMHarvest(b *testing.B) {
	for _, mode := range []Mode{ModeBitmap, ModeRing} {
		for _, mem := range benchMems {
			for _, dirty := range benchDirty {
				if uint64(dirty) >= uint64(mem)/vmm.PageSize/2 {
					continue
				}
				b.Run(fmt.Sprintf("%v/mem=%dMiB/dirty=%d", mode, mem>>20, dirty), func(b *testing.B) {
					benchKVMHarvest(b, mode, mem, dirty)
				})
			}
		}
	}
}

func benchKVMHarvest(b *testing.B, mode Mode, mem int64, dirty int) {
	vmmtest.RequireKVM(b)
	host, err := ProbeHost()
	if err != nil {
		b.Fatal(err)
	}
	entries, err := RingEntriesFor(mode, mem, host)
	if err != nil {
		b.Skipf("%v", err)
	}
	img, err := guests.Image("memtouch")
	if err != nil {
		b.Fatal(err)
	}
	con := &guests.MemtouchConsole{}
	m, err := vmm.New(vmm.Config{VCPUs: 1, MemSize: mem, IRQChip: true, DirtyRingEntries: entries, Console: con,
		Params: map[string]string{"ws": strconv.Itoa(dirty), "dirty": strconv.Itoa(dirty), "mode": "small", "every": "1"}})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	if err := m.LoadBareMetal(img, nil); err != nil {
		b.Fatal(err)
	}
	tr, err := New(m, mode)
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	dst := machine.NewBitmap(m.Memory().Pages())
	if _, err := tr.Harvest(dst); err != nil { // the loader's pages
		b.Fatal(err)
	}
	if err := m.Start(); err != nil {
		b.Fatal(err)
	}
	// waitPass waits until memtouch has printed pass p (it has written
	// every page of its set in it) and returns the last pass printed.
	waitPass := func(p uint64) uint64 {
		for con.Pass() < p {
			select {
			case <-m.Stopped():
				_, err := m.Wait()
				b.Fatalf("the guest stopped: %v", err)
			case <-time.After(100 * time.Microsecond):
			}
		}
		return con.Pass()
	}
	waitPass(1)
	var fullsBefore int
	fulls := func() int { return 0 }
	if rt, ok := tr.(*ringTracker); ok {
		fulls = func() int {
			rt.mu.Lock()
			defer rt.mu.Unlock()
			return rt.fulls
		}
	}
	fullsBefore = fulls()
	if err := m.Pause(); err != nil {
		b.Fatal(err)
	}
	if _, err := tr.Harvest(dst); err != nil {
		b.Fatal(err)
	}
	var harvests, counts []time.Duration
	total := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The pass under way when the guest stopped may have written
		// pages before the last harvest: wait for the one after it.
		last := con.Pass()
		if err := m.Resume(); err != nil {
			b.Fatal(err)
		}
		waitPass(last + 2)
		start := time.Now()
		if _, err := tr.DirtySoFar(); err != nil {
			b.Fatal(err)
		}
		counts = append(counts, time.Since(start))
		if err := m.Pause(); err != nil {
			b.Fatal(err)
		}
		dst.Clear()
		start = time.Now()
		if _, err := tr.Harvest(dst); err != nil {
			b.Fatal(err)
		}
		harvests = append(harvests, time.Since(start))
		got := dst.Count()
		if got < dirty {
			b.Fatalf("harvest %d reported %d pages; the guest wrote all %d of its working set in the epoch", i, got, dirty)
		}
		total += got
	}
	b.StopTimer()
	slices.Sort(harvests)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(us(harvests[len(harvests)/2]), "harvest-p50-µs")
	b.ReportMetric(us(harvests[(len(harvests)-1)*99/100]), "harvest-p99-µs")
	b.ReportMetric(float64(total)/float64(b.N), "pages/harvest")
	b.ReportMetric(float64(fulls()-fullsBefore)/float64(b.N), "ring-fulls/epoch")
	// The primary's count before each pause, the guest running.
	slices.Sort(counts)
	b.ReportMetric(us(counts[len(counts)/2]), "count-running-p50-µs")
}
