package session

import (
	"bytes"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// A backup's memory hashes cross a real connection, imageBatch ranges a
// message; the primary compares them with its memory, in calls that split
// a range: the pages of ranges equal on both sides are kept, those of the
// two ranges that differ are not, every page's contents come back as read,
// and a page whose range's hash has not arrived is not decided.
// CompareStill, over memory in place, decides the same.
func TestBackupMemoryComparesRanges(t *testing.T) {
	const ranges = imageBatch + 3
	pages := uint64(ranges*format.MemHashRangePages - 5) // the last range short
	mem := make([]byte, pages*format.PageSize)
	for i := range mem {
		mem[i] = byte(i*29 + i>>12)
	}
	backupMem := bytes.Clone(mem)
	backupMem[7*format.MemHashRangePages*format.PageSize+99] ^= 1 // range 7
	backupMem[len(backupMem)-1] ^= 1                              // the last
	differ := []uint64{7, ranges - 1}

	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	primary, backup := format.NewLink(a, 0, nil), format.NewLink(b, 0, nil)
	var lock sync.Mutex
	sent := make(chan error, 1)
	go func() { sent <- SendMemoryHashes(backup, backupMem, &lock, 5*time.Second, make(chan struct{})) }()

	bm, still := NewBackupMemory(pages), NewBackupMemory(pages)
	read := func(dst []byte, pfn uint64) { copy(dst, mem[pfn*format.PageSize:]) }
	pfns := make([]uint64, pages)
	for i := range pfns {
		pfns[i] = uint64(i)
	}
	if n, dst, kept := bm.Compare(pfns, nil, nil, read); n != 0 || len(dst) != 0 || len(kept) != 0 {
		t.Fatalf("before any hash arrived Compare decided %d pages (%d kept)", n, len(kept))
	}
	for range 2 {
		typ, payload, err := primary.Next()
		if err != nil || typ != format.MsgMemoryHashes {
			t.Fatalf("the backup sent %v, %v: want memory hashes", typ, err)
		}
		h, err := format.DecodeMemoryHashes(payload)
		if err != nil {
			t.Fatal(err)
		}
		if err := bm.Add(h); err != nil {
			t.Fatal(err)
		}
		if err := still.Add(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	var dst []byte
	var kept []uint64
	for rest := pfns; len(rest) > 0; {
		var n int
		n, dst, kept = bm.Compare(rest[:min(len(rest), 100)], dst, kept, read) // 100: ranges split
		if n == 0 {
			t.Fatal("Compare decided nothing with every hash in")
		}
		rest = rest[n:]
	}
	if !bytes.Equal(dst, mem) {
		t.Fatal("the contents Compare read are not the memory's")
	}
	var want []uint64
	for _, p := range pfns {
		if !slices.Contains(differ, p/format.MemHashRangePages) {
			want = append(want, p)
		}
	}
	if !slices.Equal(kept, want) || bm.Kept() != len(want) {
		t.Fatalf("kept %d pages (Kept %d), want %d: every page but those of ranges %v", len(kept), bm.Kept(), len(want), differ)
	}
	var stillKept []uint64
	for rest := pfns; len(rest) > 0; {
		var n int
		n, stillKept = still.CompareStill(rest[:min(len(rest), 100)], mem, stillKept)
		if n == 0 {
			t.Fatal("CompareStill decided nothing with every hash in")
		}
		rest = rest[n:]
	}
	if !slices.Equal(stillKept, want) {
		t.Fatalf("CompareStill kept %d pages, want %d: every page but those of ranges %v", len(stillKept), len(want), differ)
	}
}

// Hashes that do not follow those before, or describe another memory, are
// refused.
func TestBackupMemoryRefusesStrayHashes(t *testing.T) {
	pages := uint64(3 * format.MemHashRangePages)
	bm := NewBackupMemory(pages)
	if err := bm.Add(format.MemoryHashes{MemPages: pages, First: 1, Sums: make([][32]byte, 1)}); err == nil {
		t.Error("hashes starting at range 1 accepted first")
	}
	if err := bm.Add(format.MemoryHashes{MemPages: 2 * pages, Sums: make([][32]byte, 1)}); err == nil {
		t.Error("hashes of another memory accepted")
	}
	if err := bm.Add(format.MemoryHashes{MemPages: pages, Sums: make([][32]byte, 3)}); err != nil {
		t.Fatal(err)
	}
	if err := bm.Add(format.MemoryHashes{MemPages: pages, First: 3, Sums: make([][32]byte, 1)}); err == nil {
		t.Error("hashes past the memory accepted")
	}
}
