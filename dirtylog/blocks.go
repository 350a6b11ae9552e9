package dirtylog

import (
	"sync"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Blocks tracks which blocks of a disk the guest wrote: a mirrored disk's
// dirty log, by which a full sync copies the disk while the guest runs, as
// the pages' dirty log copies memory.
//
// A device marks a write once the written data is what a read of the disk
// returns (after the write, never before): a copier that takes the marks
// and then reads the blocks either reads the new data or finds the block
// marked again. Safe for concurrent use.
type Blocks struct {
	size  int64
	block int64

	mu    sync.Mutex
	dirty *machine.Bitmap
}

// NewBlocks tracks a disk of size bytes in blocks of block bytes (the last
// one may be shorter), none dirty.
func NewBlocks(size, block int64) *Blocks {
	return &Blocks{size: size, block: block, dirty: machine.NewBitmap(uint64((size + block - 1) / block))}
}

// Mark records a write of n bytes at byte offset off. Bytes outside the
// disk are ignored (the device refused the write).
func (b *Blocks) Mark(off int64, n int) {
	end := min(off+int64(n), b.size)
	if off < 0 || n <= 0 || off >= end {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := off / b.block; i*b.block < end; i++ {
		b.dirty.Set(uint64(i))
	}
}

// MarkAll marks every block: the next Take returns the whole disk.
func (b *Blocks) MarkAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dirty.SetAll()
}

// Count is the number of dirty blocks.
func (b *Blocks) Count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dirty.Count()
}

// Take appends the dirty blocks' indexes to dst in increasing order,
// clears them, and returns dst.
func (b *Blocks) Take(dst []uint64) []uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	dst = b.dirty.AppendPages(dst)
	b.dirty.Clear()
	return dst
}
