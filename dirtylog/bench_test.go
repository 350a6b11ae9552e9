package dirtylog

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
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
