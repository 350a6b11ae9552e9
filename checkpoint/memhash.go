package checkpoint

import "crypto/sha256"

// The memory hash a committing checkpoint carries with --verify (the
// memhash section, HashRangeSHA256) is the SHA-256 of the SHA-256 of each
// memory range (MemHashRangePages pages, the last the rest of memory), in
// order: HashMemory. Each side keeps every range's sum (memorySums) and
// hashes again only the ranges written since, so a checkpoint's hash costs
// what it changed, not the guest's size: a whole-memory SHA-256 took
// 80 % of the CPU of a 512 MiB pair with --verify.

// HashMemory is the memory hash of mem, a guest memory (page-frame i at
// mem[i*PageSize:]).
func HashMemory(mem []byte) [32]byte {
	s := newMemorySums(uint64(len(mem)) / PageSize)
	s.refresh(mem)
	return s.digest()
}

// memorySums holds the sum of each range of a memory (HashMemoryRange)
// and which ranges were written since their sum was taken (stale); scrub
// is the next range staleNext marks.
type memorySums struct {
	sums  [][32]byte
	stale []bool
	scrub int
}

// newMemorySums is the sums of a memory of pages pages, every one stale.
func newMemorySums(pages uint64) memorySums {
	n := MemHashRanges(pages)
	s := memorySums{sums: make([][32]byte, n), stale: make([]bool, n)}
	s.staleAll()
	return s
}

// touch says page pfn was written.
func (s *memorySums) touch(pfn uint64) { s.stale[pfn/MemHashRangePages] = true }

// staleAll says every page may have been written.
func (s *memorySums) staleAll() {
	for i := range s.stale {
		s.stale[i] = true
	}
}

// staleNext marks the next n ranges in turn (from where the last call
// stopped) as stale though nothing wrote them.
func (s *memorySums) staleNext(n int) {
	for range min(n, len(s.stale)) {
		s.stale[s.scrub] = true
		s.scrub = (s.scrub + 1) % len(s.stale)
	}
}

// set records sum as range r's, taken of its current contents.
func (s *memorySums) set(r uint64, sum [32]byte) {
	s.sums[r], s.stale[r] = sum, false
}

// refresh takes again the sum of every stale range of mem but those in
// skip (in increasing range order), whose sums the caller has.
func (s *memorySums) refresh(mem []byte, skip ...rangeSumAt) {
	next := 0
	for r, stale := range s.stale {
		if next < len(skip) && skip[next].r == uint64(r) {
			next++
			continue
		}
		if stale {
			s.set(uint64(r), HashMemoryRange(mem, uint64(r)))
		}
	}
}

// digest is the memory hash of the sums, with over[i].sum in place of
// range over[i].r's (over in increasing range order). Precondition: no
// range is stale but those in over.
func (s *memorySums) digest(over ...rangeSumAt) [32]byte {
	d := sha256.New()
	next := 0
	for r := range s.sums {
		sum := s.sums[r]
		if next < len(over) && over[next].r == uint64(r) {
			sum = over[next].sum
			next++
		}
		d.Write(sum[:])
	}
	var out [32]byte
	d.Sum(out[:0])
	return out
}

// rangeSumAt is range r's sum.
type rangeSumAt struct {
	r   uint64
	sum [32]byte
}
