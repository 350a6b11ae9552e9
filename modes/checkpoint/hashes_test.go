package checkpoint

import (
	"testing"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/session"
)

// TestHashesOfAnotherSeriesAreDropped: the primary compares a sync with
// the hash series named by it only. Hashes of another series (one the
// backup halted when a later sync asked again, or the Hello's once a
// later sync asks) describe what that sync's messages have changed since:
// they are dropped, not added; those of the series go in; hashes of an
// image the Hellos did not agree on end the link.
func TestHashesOfAnotherSeriesAreDropped(t *testing.T) {
	const pages = 4 * format.MemHashRangePages
	mem := make([]byte, pages*format.PageSize)
	p := &Primary{askMemory: true}
	series := format.HashesFor{Generation: 2, Epoch: 40}
	hashes := &session.Hashes{For: series, Memory: session.NewBackupMemory(pages)}
	p.hashes.Set(hashes)
	sums := [][32]byte{format.HashMemoryRange(mem, 0)}
	read := func(dst []byte, pfn uint64) { copy(dst, mem[pfn*format.PageSize:]) }
	decided := func() int {
		n, _, _ := hashes.Memory.Compare([]uint64{0}, nil, nil, read)
		return n
	}
	for _, other := range []format.HashesFor{format.HelloHashes, {Generation: 2, Epoch: 39}, {Generation: 1, Epoch: 40}} {
		if err := p.handleMemoryHashes(format.MemoryHashes{For: other, MemPages: pages, Sums: sums}); err != nil {
			t.Fatalf("hashes of series %+v: %v", other, err)
		}
		if decided() != 0 {
			t.Fatalf("hashes of series %+v were taken for series %+v", other, series)
		}
	}
	if err := p.handleMemoryHashes(format.MemoryHashes{For: series, MemPages: pages, Sums: sums}); err != nil {
		t.Fatal(err)
	}
	if decided() != 1 || hashes.Memory.Kept() != 1 {
		t.Fatalf("the series' own hashes did not decide page 0 (kept %d)", hashes.Memory.Kept())
	}
	p.hashes.Set(nil) // its first round is over
	if err := p.handleMemoryHashes(format.MemoryHashes{For: series, MemPages: pages, First: 1, Sums: sums}); err != nil {
		t.Fatalf("hashes after the first round: %v", err)
	}
	if err := p.handleImageHashes(format.ImageHashes{For: series, DiskSize: format.DiskHashRange, Sums: sums}); err == nil {
		t.Fatal("image hashes the Hellos did not agree on were taken")
	}
}
