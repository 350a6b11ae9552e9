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
	// A long timeout: imageBatch ranges a message, however slow the host.
	go func() {
		sent <- SendMemoryHashes(backup, format.HelloHashes, backupMem, &lock, time.Minute, make(chan struct{}))
	}()

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

// Where hashing is slow, a message goes once a quarter of the timeout has
// passed, with the hashes so far: the primary, which gives up on hashes
// that stop coming for the timeout, hears in time. Every range still
// comes, once, in order.
func TestSlowHashesGoInTime(t *testing.T) {
	const n, timeout = 40, 40 * time.Millisecond
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	primary, backup := format.NewLink(a, 0, nil), format.NewLink(b, 0, nil)
	sent := make(chan error, 1)
	go func() {
		sent <- sendRangeHashes(backup, n, timeout, make(chan struct{}),
			func(r uint64) ([32]byte, error) { time.Sleep(timeout / 8); return [32]byte{byte(r)}, nil },
			func(first uint64, sums [][32]byte) (format.MsgType, []byte) {
				return format.MsgMemoryHashes, format.MemoryHashes{MemPages: n * format.MemHashRangePages, First: first, Sums: sums}.Append(nil)
			})
	}()
	var next uint64
	messages := 0
	for next < n {
		_, payload, err := primary.Next()
		if err != nil {
			t.Fatal(err)
		}
		h, err := format.DecodeMemoryHashes(payload)
		if err != nil {
			t.Fatal(err)
		}
		if h.First != next {
			t.Fatalf("a message starts at range %d, %d expected", h.First, next)
		}
		for i, s := range h.Sums {
			if s[0] != byte(next+uint64(i)) {
				t.Fatalf("range %d carries range %d's hash", next+uint64(i), s[0])
			}
		}
		next += uint64(len(h.Sums))
		messages++
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	// 5 ms a hash, a message every 10 ms or so: about 20 messages, not 1.
	if messages < n/4 {
		t.Fatalf("%d ranges came in %d messages: a message waited for more than a quarter of the timeout", n, messages)
	}
}
