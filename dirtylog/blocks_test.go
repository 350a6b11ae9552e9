package dirtylog

import (
	"slices"
	"testing"
)

// Mark covers every block a write touches and nothing outside the disk;
// Take returns them once, in order.
func TestBlocksMarkTake(t *testing.T) {
	b := NewBlocks(10*512+100, 512) // 11 blocks, the last 100 bytes
	b.Mark(0, 1)
	b.Mark(511, 2)      // blocks 0 and 1
	b.Mark(5*512, 512)  // block 5 exactly
	b.Mark(10*512, 500) // the short last block, past the end ignored
	b.Mark(-1, 10)      // refused writes mark nothing
	b.Mark(20*512, 10)
	b.Mark(3*512, 0)
	if got, want := b.Take(nil), []uint64{0, 1, 5, 10}; !slices.Equal(got, want) {
		t.Fatalf("Take = %v, want %v", got, want)
	}
	if got := b.Take(nil); len(got) != 0 {
		t.Fatalf("second Take = %v, want nothing", got)
	}
	b.MarkAll()
	if got := b.Take(nil); len(got) != 11 || got[10] != 10 {
		t.Fatalf("Take after MarkAll = %v, want 0..10", got)
	}
}
