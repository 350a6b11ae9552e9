package session

import (
	"fmt"
	"sync"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// A backup whose memory holds a guest state, or part of one — it lost its
// link and joins again, or its sync was cut — has most of the guest's
// memory already. So it offers its memory's range hashes in its Hello
// (SendsMemoryHashes), a primary that pre-copies asks for them
// (WantMemoryHashes), the backup sends every range's (SendMemoryHashes),
// and the first pass carries the pages of every range equal on both sides
// as KEPT records (BackupMemory.Compare): the sync still covers every page.
//
// Why that is safe, as for the disk (image.go): until the sync commits,
// the backup's memory changes only by the pages the primary sends, and
// the primary sends a range's pages only once it has that range's hash,
// taken before (the backup hashes a range and applies a checkpoint one at
// a time: lock). The primary compares a copy of its range, read while the
// guest runs after the pass's harvest, and that copy is what it encodes
// and keeps as the backup's (the encoder's cache, which later deltas are
// made against); a write from the harvest on is in the next pass.

// SendMemoryHashes hashes every range of mem, a backup's guest memory, in
// order, holding lock while it hashes a range (the backup's receiver holds
// it while it applies a checkpoint), and sends the hashes on l, named f
// (what asked for them), imageBatch ranges a message (timeout as
// Link.Send's). It returns once all are sent, when stop closes (nil), or
// on an error sending.
func SendMemoryHashes(l *format.Link, f format.HashesFor, mem []byte, lock sync.Locker, timeout time.Duration, stop <-chan struct{}) error {
	pages := uint64(len(mem)) / format.PageSize
	return sendRangeHashes(l, format.MemHashRanges(pages), timeout, stop,
		func(r uint64) ([32]byte, error) {
			lock.Lock()
			defer lock.Unlock()
			return format.HashMemoryRange(mem, r), nil
		},
		func(first uint64, sums [][32]byte) (format.MsgType, []byte) {
			return format.MsgMemoryHashes, format.MemoryHashes{For: f, MemPages: pages, First: first, Sums: sums}.Append(nil)
		})
}

// BackupMemory is what a primary knows of its backup's memory: the range
// hashes the backup has sent so far, which Compare compares with the
// primary's. Add is called by the link's receiver, the rest by the
// pre-copy.
type BackupMemory struct {
	rangeSums
	pages uint64
	buf   []byte // the range Compare read last
}

// NewBackupMemory makes a BackupMemory for a guest of pages pages.
func NewBackupMemory(pages uint64) *BackupMemory {
	return &BackupMemory{rangeSums: newRangeSums(), pages: pages, buf: make([]byte, format.MemHashRangePages*format.PageSize)}
}

// Add records hashes from the backup. They must follow those before it
// (the backup sends every range in order) and describe ranges of a memory
// of the primary's size: an error otherwise, which should end the link.
func (b *BackupMemory) Add(h format.MemoryHashes) error {
	if h.MemPages != b.pages {
		return fmt.Errorf("the backup's memory hashes are of %d pages, this guest has %d", h.MemPages, b.pages)
	}
	return b.add("memory", h.First, h.Sums, format.MemHashRanges(b.pages))
}

// Compare decides pages pfns (in increasing order) in turn: for each range
// they fall in, it reads the whole range with read (a live read of one
// page into its first argument) and hashes it; it appends each page's
// contents, as read, to dst, and to kept the pages of the ranges whose
// hash the backup's memory shares, which the sync carries as KEPT with
// those contents. It stops at the first page whose range's hash has not
// arrived yet. It returns how many pages it decided, pfns[:n]: all go in
// the sync, with their contents in dst, those in kept without their data.
// Call it on the first pass's pages, after its harvest (see above).
func (b *BackupMemory) Compare(pfns []uint64, dst []byte, kept []uint64, read func(dst []byte, pfn uint64)) (n int, _ []byte, _ []uint64) {
	n, kept, _ = b.compare(pfns, format.MemHashRangePages, kept, func(r uint64) ([32]byte, error) {
		first, count := b.rangePages(r)
		for j := range count {
			read(b.buf[j*format.PageSize:(j+1)*format.PageSize], first+j)
		}
		return format.HashMemoryRange(b.buf[:count*format.PageSize], 0), nil
	}, func(pfn uint64) {
		off := (pfn - b.last*format.MemHashRangePages) * format.PageSize
		dst = append(dst, b.buf[off:off+format.PageSize]...)
	})
	return n, dst, kept
}

// CompareStill is Compare for mem, a guest's memory that does not change
// while it is called or until the pages it decides are encoded (a replay
// primary's, between two runs of its guest): it hashes the ranges in
// place, and the pages' contents are mem's.
func (b *BackupMemory) CompareStill(pfns []uint64, mem []byte, kept []uint64) (n int, _ []uint64) {
	n, kept, _ = b.compare(pfns, format.MemHashRangePages, kept, func(r uint64) ([32]byte, error) {
		return format.HashMemoryRange(mem, r), nil
	}, nil)
	return n, kept
}

// rangePages is range r's first page and how many pages it has (the last
// range the rest of memory).
func (b *BackupMemory) rangePages(r uint64) (first, count uint64) {
	first = r * format.MemHashRangePages
	return first, min(format.MemHashRangePages, b.pages-first)
}
