package dirtylog

import (
	"math/rand"
	"slices"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine/machinetest"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

func TestClearChunksExamples(t *testing.T) {
	cases := []struct {
		name  string
		pages uint64
		set   []uint64
		want  []clearChunk
	}{
		{"nothing dirty", 1000, nil, nil},
		{"one page", 1000, []uint64{70}, []clearChunk{{64, 64}}},
		{"last partial chunk ends at the slot end", 100, []uint64{99}, []clearChunk{{64, 36}}},
		{"whole small slot", 100, []uint64{0, 99}, []clearChunk{{0, 100}}},
		{"gap of clearGap words merges", 64 * 20, []uint64{0, 64 * (clearGap + 1)}, []clearChunk{{0, 64 * (clearGap + 2)}}},
		{"gap of clearGap+1 words splits", 64 * 20, []uint64{0, 64 * (clearGap + 2)}, []clearChunk{{0, 64}, {64 * (clearGap + 2), 64}}},
	}
	for _, c := range cases {
		log := make([]uint64, (c.pages+63)/64)
		for _, p := range c.set {
			log[p/64] |= 1 << (p % 64)
		}
		if got := clearChunks(log, c.pages); !slices.Equal(got, c.want) {
			t.Errorf("%s: clearChunks = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestClearChunksProperties checks, on random logs, what KVM_CLEAR_DIRTY_LOG
// requires and what re-protection needs: every dirty page is in a chunk;
// chunks start at a multiple of 64, have a count that is a multiple of 64 or
// ends at the slot's end, lie inside the slot, ascend without overlap, start
// and end on a word with set bits, and hold no run of more than clearGap
// zero words.
func TestClearChunksProperties(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 2000; i++ {
		pages := uint64(1 + r.Intn(3000))
		log := machinetest.RandomBitmap(r, pages).Words()
		if r.Intn(4) == 0 { // sparse: few set words
			for w := range log {
				if r.Intn(8) != 0 {
					log[w] = 0
				}
			}
		}
		chunks := clearChunks(log, pages)
		covered := machine.NewBitmap(pages)
		next := uint64(0)
		for _, c := range chunks {
			end := c.first + c.count
			switch {
			case c.first%64 != 0, c.count == 0, end > pages,
				c.count%64 != 0 && end != pages, c.first < next:
				t.Fatalf("case %d (%d pages): bad chunk %+v in %v", i, pages, c, chunks)
			}
			if log[c.first/64] == 0 || log[(end-1)/64] == 0 {
				t.Fatalf("case %d: chunk %+v starts or ends on a clean word", i, c)
			}
			zeros := 0
			for w := c.first / 64; w < (end+63)/64; w++ {
				if log[w] == 0 {
					zeros++
					if zeros > clearGap {
						t.Fatalf("case %d: chunk %+v spans more than %d clean words", i, c, clearGap)
					}
				} else {
					zeros = 0
				}
			}
			for p := c.first; p < end; p++ {
				covered.Set(p)
			}
			next = end
		}
		for p := uint64(0); p < pages; p++ {
			if log[p/64]&(1<<(p%64)) != 0 && !covered.Has(p) {
				t.Fatalf("case %d: dirty page %d in no chunk of %v", i, p, chunks)
			}
		}
	}
}

func TestOrShiftedPlacesSlotPages(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	for i := 0; i < 500; i++ {
		pages := uint64(1 + r.Intn(500))
		first := uint64(r.Intn(300))
		src := machinetest.RandomBitmap(r, pages)
		// Garbage beyond the slot's last page must be ignored, as KVM's
		// bitmap rounds up to 64 pages.
		if pages%64 != 0 {
			src.Words()[len(src.Words())-1] |= ^uint64(0) << (pages % 64)
		}
		dst := machine.NewBitmap(first + pages + 64)
		orShifted(dst.Words(), src.Words(), first, pages)
		for p := uint64(0); p < dst.Len(); p++ {
			want := p >= first && p < first+pages && src.Words()[(p-first)/64]&(1<<((p-first)%64)) != 0
			if dst.Has(p) != want {
				t.Fatalf("case %d (first %d, %d pages): page %d = %v, want %v", i, first, pages, p, dst.Has(p), want)
			}
		}
	}
}
