package session

import (
	"slices"
	"testing"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The first pass is every page and block; a later pass what was written
// since; the passes end at Rounds, or once what is left weighs at most
// Done pages, a block counting as the pages it holds, and then leave the
// blocks in the log for the commit.
func TestPrecopyPlan(t *testing.T) {
	blocks := dirtylog.NewBlocks(3*format.DiskBlockSize, format.DiskBlockSize)
	p := NewPrecopy(3, 20, 8, blocks)
	pfns, bs := p.First(nil, nil)
	if !slices.Equal(pfns, []uint64{0, 1, 2, 3, 4, 5, 6, 7}) || !slices.Equal(bs, []uint64{0, 1, 2}) || p.Pass() != 1 {
		t.Fatalf("first pass %d: pages %v blocks %v", p.Pass(), pfns, bs)
	}
	dirty := machine.NewBitmap(8)
	dirty.Set(3)
	dirty.Set(5)
	blocks.Mark(format.DiskBlockSize+1, 1) // 16 pages' weight: 18 left, at most 20
	pfns, bs, more := p.Next(dirty, nil, nil)
	if more || !slices.Equal(pfns, []uint64{3, 5}) || len(bs) != 0 || blocks.Count() != 1 {
		t.Fatalf("18 pages' weight left, Done 20: more %v, pages %v, blocks %v, %d left in the log", more, pfns, bs, blocks.Count())
	}
	blocks.Mark(0, 1) // 34 pages' weight
	pfns, bs, more = p.Next(dirty, nil, nil)
	if !more || !slices.Equal(pfns, []uint64{3, 5}) || !slices.Equal(bs, []uint64{0, 1}) || p.Pass() != 2 {
		t.Fatalf("34 left: more %v, pass %d, pages %v, blocks %v", more, p.Pass(), pfns, bs)
	}
	dirty.SetAll()
	blocks.MarkAll()
	if _, _, more = p.Next(dirty, nil, nil); !more || p.Pass() != 3 {
		t.Fatalf("pass 3 of 3: more %v, pass %d", more, p.Pass())
	}
	blocks.MarkAll()
	if _, _, more = p.Next(dirty, nil, nil); more {
		t.Fatal("a pass after Rounds")
	}
}
