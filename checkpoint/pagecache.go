package checkpoint

import (
	"fmt"
)

// PageCache is the primary's copy of every page as the backup will hold it
// once every checkpoint encoded so far has committed. It is the XOR base
// for deltas. A page is valid when the backup is known (under that
// assumption) to hold it; a page that is not valid is never sent as a delta.
//
// The cache is owned by one Encoder and used from that Encoder's goroutine.
// See the package comment for the rule that keeps it right: any checkpoint
// the backup does not commit forces a full sync.
//
// A page never written since the cache was made holds zeros without its
// bytes being touched: a guest's memory is mostly zero at first, and a
// cache as large as the guest should not cost its size in resident memory
// (nor, on hosts where faults are dear, in page faults) before it must.
type PageCache struct {
	mem     []byte   // len = pages*PageSize
	valid   []uint64 // bit per page
	written []uint64 // bit per page whose bytes in mem were ever written
	pages   uint64

	// sums are the range sums of mem, for Hash.
	sums memorySums

	// base is the state the cache describes, set when a committing
	// checkpoint finishes encoding; baseValid is false until then and after
	// Invalidate.
	baseGeneration, baseEpoch uint64
	baseValid                 bool
}

// NewPageCache returns an all-invalid cache for a guest of memSize bytes,
// which must be a positive multiple of PageSize. It allocates memSize bytes.
func NewPageCache(memSize int) (*PageCache, error) {
	if memSize <= 0 || memSize%PageSize != 0 || uint64(memSize/PageSize) > MaxMemPages {
		return nil, fmt.Errorf("new page cache: %w: %d bytes is not a positive multiple of %d up to %d pages",
			ErrBadMemSize, memSize, PageSize, MaxMemPages)
	}
	n := uint64(memSize / PageSize)
	return &PageCache{
		mem:     make([]byte, memSize),
		valid:   make([]uint64, (n+63)/64),
		written: make([]uint64, (n+63)/64),
		pages:   n,
		sums:    newMemorySums(n),
	}, nil
}

// Pages is the guest memory size in pages.
func (c *PageCache) Pages() uint64 { return c.pages }

// Base returns the (generation, epoch) the cache describes: the backup's
// committed state once every checkpoint encoded so far commits. ok is false
// when no committing checkpoint has been encoded since the last Invalidate.
func (c *PageCache) Base() (generation, epoch uint64, ok bool) {
	return c.baseGeneration, c.baseEpoch, c.baseValid
}

// Invalidate forgets every page: the backup's contents are unknown, so
// the next checkpoint must be a full sync.
func (c *PageCache) Invalidate() {
	clear(c.valid)
	c.baseValid = false
}

// Valid reports whether page pfn is known to the backup.
func (c *PageCache) Valid(pfn uint64) bool {
	return pfn < c.pages && c.valid[pfn/64]&(1<<(pfn%64)) != 0
}

// AllValid reports whether every page is known to the backup.
func (c *PageCache) AllValid() bool {
	full := c.pages / 64
	for _, w := range c.valid[:full] {
		if w != ^uint64(0) {
			return false
		}
	}
	if rem := c.pages % 64; rem != 0 {
		return c.valid[full] == (uint64(1)<<rem)-1
	}
	return true
}

// page returns the cached bytes of pfn, read-only. Precondition:
// pfn < c.pages.
func (c *PageCache) page(pfn uint64) []byte {
	if c.written[pfn/64]&(1<<(pfn%64)) == 0 {
		return zeroPage[:]
	}
	off := pfn * PageSize
	return c.mem[off : off+PageSize : off+PageSize]
}

// store records that the backup will hold p as page pfn; zero says p is
// all zeros.
func (c *PageCache) store(pfn uint64, p []byte, zero bool) {
	bit := uint64(1) << (pfn % 64)
	if !zero || c.written[pfn/64]&bit != 0 {
		off := pfn * PageSize
		copy(c.mem[off:off+PageSize], p)
		c.written[pfn/64] |= bit
		c.sums.touch(pfn)
	}
	c.valid[pfn/64] |= bit
}

func (c *PageCache) setBase(generation, epoch uint64) {
	c.baseGeneration, c.baseEpoch, c.baseValid = generation, epoch, true
}

// Hash returns the memory hash (HashMemory) of the cached memory: what the
// backup's memory hashes to once every encoded checkpoint commits. It
// hashes again only the ranges stored to since the last call. Meaningful
// only when AllValid.
func (c *PageCache) Hash() [32]byte {
	c.sums.refresh(c.mem)
	return c.sums.digest()
}
