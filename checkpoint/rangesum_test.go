package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"math/rand"
	"testing"
)

// A range's hash is the SHA-256 of its bytes however it is computed: a
// range of zeros (found zero, its hash computed once) as any other, a
// range with one byte set at either end, and a short last range of zeros,
// for memory and for a disk.
func TestRangeHashesAreSHA256(t *testing.T) {
	const pages = 3*MemHashRangePages + 5 // the last range short
	mem := make([]byte, pages*PageSize)
	mem[MemHashRangePages*PageSize] = 1     // range 1's first byte
	mem[3*MemHashRangePages*PageSize-1] = 1 // range 2's last byte
	disk := bytes.NewReader(mem)            // a disk of the same bytes
	buf := make([]byte, DiskHashRange)
	for r := uint64(0); r < MemHashRanges(pages); r++ {
		off := r * MemHashRangePages * PageSize
		want := sha256.Sum256(mem[off:min(off+DiskHashRange, uint64(len(mem)))])
		if got := HashMemoryRange(mem, r); got != want {
			t.Errorf("memory range %d hashes to %x, SHA-256 %x", r, got[:8], want[:8])
		}
		if got, err := HashDiskRange(disk, int64(len(mem)), r, buf); err != nil || got != want {
			t.Errorf("disk range %d hashes to %x (%v), SHA-256 %x", r, got[:8], err, want[:8])
		}
	}
}

// BenchmarkHashMemoryRange hashes a range of zeros (most of an idle
// guest's memory) and one of random bytes.
func BenchmarkHashMemoryRange(b *testing.B) {
	random := make([]byte, DiskHashRange)
	rand.New(rand.NewSource(1)).Read(random)
	for _, c := range []struct {
		name string
		mem  []byte
	}{{"zero", make([]byte, DiskHashRange)}, {"random", random}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(DiskHashRange)
			for range b.N {
				HashMemoryRange(c.mem, 0)
			}
		})
	}
}

// The page cache's memory hash follows what is stored in it, range by
// range: after each of many rounds of stores (data, zero pages, pages
// becoming zero) it is HashMemory of the memory the cache describes.
func TestPageCacheHashFollowsStores(t *testing.T) {
	const pages = 5*MemHashRangePages + 3
	c, err := NewPageCache(pages * PageSize)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, pages*PageSize)
	rng := rand.New(rand.NewSource(7))
	for round := range 50 {
		for range 1 + rng.Intn(20) {
			pfn := uint64(rng.Intn(pages))
			p := want[pfn*PageSize : (pfn+1)*PageSize]
			zero := rng.Intn(3) == 0
			if zero {
				clear(p)
			} else {
				rng.Read(p[:64])
			}
			c.store(pfn, p, zero)
		}
		if got, sum := c.Hash(), HashMemory(want); got != sum {
			t.Fatalf("round %d: the cache hashes to %x, its memory to %x", round, got[:8], sum[:8])
		}
	}
}

// A backup's memory hash takes again, in turn, ranges nothing has written:
// a byte of its memory changed behind its back, in a range no checkpoint
// writes, is found (ErrMemHash) within ranges/scrubRanges checkpoints, not
// kept for ever on the strength of a sum taken before.
func TestBackupMemoryHashFindsAChangeBehindItsBack(t *testing.T) {
	const ranges = 3 * scrubRanges
	h := newHarness(t, ranges*MemHashRangePages, 5)
	h.fullSync()
	h.mustCommit(h.encode(KindEpoch, 0, h.epoch+1, []uint64{3}, true)) // sums taken of every range
	h.bk.Memory()[(ranges-1)*MemHashRangePages*PageSize+9] ^= 1        // the last range
	for i := range ranges/scrubRanges + 1 {
		h.mutate(3, changeRandom)
		ck := h.encode(KindEpoch, 0, h.epoch+1, []uint64{3}, true)
		if _, err := h.bk.Receive(ck); err != nil {
			if !errors.Is(err, ErrMemHash) {
				t.Fatalf("checkpoint %d: %v, want ErrMemHash", i, err)
			}
			return
		}
	}
	t.Fatalf("the changed byte went unnoticed through %d checkpoints", ranges/scrubRanges+1)
}

// A backup's memory hash follows what checkpoints without one wrote: a
// range written by an epoch that carried no hash counts with its new
// contents in the next one's, which writes elsewhere (both ranges past
// those the two hashes take again in turn).
func TestBackupMemoryHashFollowsCheckpointsWithout(t *testing.T) {
	const written, elsewhere = 3 * scrubRanges, 3*scrubRanges + 1
	h := newHarness(t, 4*scrubRanges*MemHashRangePages, 6)
	h.fullSync()
	h.mutate(written*MemHashRangePages+1, changeRandom)
	h.mustCommit(h.encode(KindEpoch, 0, h.epoch+1, []uint64{written*MemHashRangePages + 1}, false))
	h.mutate(elsewhere*MemHashRangePages, changeRandom)
	h.mustCommit(h.encode(KindEpoch, 0, h.epoch+1, []uint64{elsewhere * MemHashRangePages}, true))
}

// With SharedMemory (a replay backup, whose guest replays in the memory) a
// memory hash takes every range as it is, so a change made between two
// checkpoints counts at once, not when its range's turn comes.
func TestSharedMemoryIsHashedWhole(t *testing.T) {
	const changed = 3 * scrubRanges // past the ranges two hashes take again in turn
	for _, shared := range []bool{true, false} {
		h := newHarness(t, 4*scrubRanges*MemHashRangePages, 8)
		bk, err := NewBackup(make([]byte, len(h.mem)), BackupConfig{SharedMemory: shared})
		if err != nil {
			t.Fatal(err)
		}
		h.bk = bk
		h.fullSync()
		h.bk.Memory()[changed*MemHashRangePages*PageSize] ^= 1
		h.mutate(3, changeRandom)
		_, err = h.bk.Receive(h.encode(KindEpoch, 0, h.epoch+1, []uint64{3}, true))
		if found := errors.Is(err, ErrMemHash); found != shared {
			t.Fatalf("shared %v: %v; a change between checkpoints found at once: %v", shared, err, found)
		}
	}
}
