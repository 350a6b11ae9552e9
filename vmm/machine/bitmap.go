package machine

import (
	"fmt"
	"iter"
	"math/bits"
)

// Bitmap is a set of RAM pages, one bit per page (by RAM page index, not
// GPA). It is what Harvest fills and what the checkpoint code copies from.
//
// A Bitmap is not safe for concurrent use.
type Bitmap struct {
	pages uint64
	words []uint64
}

// Run is Count consecutive pages starting at RAM page First.
type Run struct {
	First uint64
	Count uint64
}

// NewBitmap returns an empty bitmap for pages pages.
func NewBitmap(pages uint64) *Bitmap {
	return &Bitmap{pages: pages, words: make([]uint64, (pages+63)/64)}
}

// Len is the number of pages the bitmap covers.
func (b *Bitmap) Len() uint64 { return b.pages }

// Words exposes the bitmap's words (bit p%64 of word p/64 is page p), for
// OR-ing in a log such as vmm.GuestMemory.TakeVMMDirty. Bits at or beyond
// Len must stay zero.
func (b *Bitmap) Words() []uint64 { return b.words }

// Set marks page p. It panics if p is out of range: a page outside RAM is a
// bug in the caller, never something to ignore.
func (b *Bitmap) Set(p uint64) {
	if p >= b.pages {
		panic(fmt.Sprintf("machine: page %d outside a bitmap of %d pages", p, b.pages))
	}
	b.words[p/64] |= 1 << (p % 64)
}

// Has reports whether page p is marked.
func (b *Bitmap) Has(p uint64) bool {
	return p < b.pages && b.words[p/64]&(1<<(p%64)) != 0
}

// Count is the number of marked pages.
func (b *Bitmap) Count() int {
	n := 0
	for _, w := range b.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// SetAll marks every page.
func (b *Bitmap) SetAll() {
	for i := range b.words {
		b.words[i] = ^uint64(0)
	}
	if r := b.pages % 64; r != 0 {
		b.words[len(b.words)-1] = 1<<r - 1
	}
}

// Clear unmarks every page.
func (b *Bitmap) Clear() { clear(b.words) }

// Or marks every page marked in o, which must have the same length.
func (b *Bitmap) Or(o *Bitmap) {
	if o.pages != b.pages {
		panic(fmt.Sprintf("machine: OR of bitmaps of %d and %d pages", b.pages, o.pages))
	}
	for i, w := range o.words {
		b.words[i] |= w
	}
}

// AppendPages appends every marked page to dst, in ascending order, and
// returns it.
func (b *Bitmap) AppendPages(dst []uint64) []uint64 {
	for r := range b.Runs() {
		for p := r.First; p < r.First+r.Count; p++ {
			dst = append(dst, p)
		}
	}
	return dst
}

// Runs yields the maximal runs of consecutive marked pages, in ascending
// order. Its cost is one load per 64 pages plus a few operations per run.
// The bitmap must not change during the iteration.
func (b *Bitmap) Runs() iter.Seq[Run] {
	return func(yield func(Run) bool) {
		var cur Run
		open := false
		for i, w := range b.words {
			base := uint64(i) * 64
			if w == 0 {
				if open {
					if !yield(cur) {
						return
					}
					open = false
				}
				continue
			}
			if w == ^uint64(0) {
				if open {
					cur.Count += 64
				} else {
					cur, open = Run{First: base, Count: 64}, true
				}
				continue
			}
			bit := uint64(0)
			for bit < 64 {
				// Skip zeros: they end an open run.
				z := uint64(bits.TrailingZeros64(w >> bit))
				if bit+z >= 64 {
					break
				}
				if z > 0 {
					if open {
						if !yield(cur) {
							return
						}
						open = false
					}
					bit += z
				}
				// Count ones from bit.
				o := uint64(bits.TrailingZeros64(^(w >> bit)))
				if open {
					cur.Count += o
				} else {
					cur, open = Run{First: base + bit, Count: o}, true
				}
				bit += o
			}
			if w>>63 == 0 && open {
				if !yield(cur) {
					return
				}
				open = false
			}
		}
		if open {
			yield(cur)
		}
	}
}
