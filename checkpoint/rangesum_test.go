package checkpoint

import (
	"bytes"
	"crypto/sha256"
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
