package session

import (
	"fmt"
	"io"
	"sync"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// A joining backup with a mirrored disk usually has most of the disk
// already: it rejoins after a failover, or lost only its memory state. So
// a primary that pre-copies asks it for its image's range hashes
// (Hello.WantImageHashes), the backup sends every range's (SendImageHashes)
// while the memory pre-copy runs, and the first pass carries the blocks of
// every range equal on both sides as KEPT records, without their data
// (BackupImage.Compare): the sync still covers every block.
//
// Why that is safe: until the sync commits, the backup's image changes
// only by the blocks the primary sends, and the primary sends a range's
// blocks only once it has that range's hash, taken before. The primary
// hashes its own range as the guest sees it while it runs, as the first
// pass reads blocks; any write from the pass's start on marks its blocks
// again, after it is visible, so a range read before a write is sent again
// in the next pass, with the write. With --verify the hashes each
// checkpoint carries compare every range again, in turn.

// imageBatch is how many ranges a backup hashes before it sends them (64
// MiB of disk): the primary decides the first blocks soon after the
// backup starts.
const imageBatch = 256

// blocksPerRange is how many disk blocks a hash range holds.
const blocksPerRange = format.DiskHashRange / format.DiskBlockSize

// A hash range must be whole blocks.
var _ [0]struct{} = [format.DiskHashRange % format.DiskBlockSize]struct{}{}

// SendImageHashes hashes every range of image, a disk of size bytes, in
// order, and sends the hashes on l, named f (what asked for them),
// imageBatch ranges a message (timeout as Link.Send's). It returns once
// all are sent, when stop closes (nil), or on an error reading the image
// or sending.
func SendImageHashes(l *format.Link, f format.HashesFor, image io.ReaderAt, size int64, timeout time.Duration, stop <-chan struct{}) error {
	buf := make([]byte, format.DiskHashRange)
	return sendRangeHashes(l, format.DiskHashRanges(size), timeout, stop,
		func(r uint64) ([32]byte, error) {
			sum, err := format.HashDiskRange(image, size, r, buf)
			if err != nil {
				return sum, fmt.Errorf("hashing this backup's image for the primary: %w", err)
			}
			return sum, nil
		},
		func(first uint64, sums [][32]byte) (format.MsgType, []byte) {
			return format.MsgImageHashes, format.ImageHashes{For: f, DiskSize: size, First: first, Sums: sums}.Append(nil)
		})
}

// sendRangeHashes sends the hashes of ranges 0 .. n-1, in order, hash(r)
// each, in messages that message makes (their type and payload) from a
// batch's first range and hashes: imageBatch ranges a message, or fewer
// where hashing them takes longer than a quarter of timeout (a slow disk,
// or a slow machine: the emulated one hashes 64 MiB in seconds), so that
// the primary, which gives up on hashes that stop coming for timeout,
// hears from the backup in time. The rest as SendImageHashes.
func sendRangeHashes(l *format.Link, n uint64, timeout time.Duration, stop <-chan struct{},
	hash func(r uint64) ([32]byte, error), message func(first uint64, sums [][32]byte) (format.MsgType, []byte)) error {
	for first := uint64(0); first < n; {
		sums := make([][32]byte, 0, min(imageBatch, n-first))
		for began := time.Now(); len(sums) < cap(sums) && (len(sums) == 0 || time.Since(began) < timeout/4); {
			select {
			case <-stop:
				return nil
			default:
			}
			sum, err := hash(first + uint64(len(sums)))
			if err != nil {
				return err
			}
			sums = append(sums, sum)
		}
		t, payload := message(first, sums)
		if err := l.Send(t, payload, timeout); err != nil {
			return err
		}
		first += uint64(len(sums))
	}
	return nil
}

// BackupImage is what a primary knows of its backup's disk image: the
// range hashes the backup has sent so far, which Compare compares with the
// primary's disk. Add is called by the link's receiver, the rest by the
// pre-copy; Compare's own fields are the pre-copy's.
type BackupImage struct {
	rangeSums
	disk io.ReaderAt // the primary's disk as its guest sees it
	size int64
	buf  []byte // a range, for Compare
}

// NewBackupImage makes a BackupImage for a primary's disk of size bytes,
// read as its guest sees it from disk.
func NewBackupImage(disk io.ReaderAt, size int64) *BackupImage {
	return &BackupImage{rangeSums: newRangeSums(), disk: disk, size: size}
}

// Add records hashes from the backup. They must follow those before it
// (the backup sends every range in order) and describe ranges of a disk
// of the primary's size: an error otherwise, which should end the link.
func (b *BackupImage) Add(h format.ImageHashes) error {
	if h.DiskSize != b.size {
		return fmt.Errorf("the backup's image hashes are of a %d-byte disk, this one has %d bytes", h.DiskSize, b.size)
	}
	return b.add("image", h.First, h.Sums, format.DiskHashRanges(b.size))
}

// rangeSums are the range hashes a backup has sent so far, in order, and
// the pre-copy's comparison of them with the primary's (compare). add is
// called by the link's receiver, the rest by the pre-copy: mu protects
// sums and arrived; the comparison's fields are the pre-copy's.
type rangeSums struct {
	mu      sync.Mutex
	sums    [][32]byte    // the hashes of ranges 0 .. len(sums)-1
	arrived chan struct{} // closed (and replaced) when hashes arrive

	// decided says last is the range compare hashed last, and equal its
	// verdict: a range's items may come in two calls. kept counts the
	// items found equal.
	decided bool
	last    uint64
	equal   bool
	kept    int
}

func newRangeSums() rangeSums { return rangeSums{arrived: make(chan struct{})} }

// add records the hashes of ranges first .. first+len(sums)-1 of a thing
// (what) of n ranges: they must follow those before.
func (s *rangeSums) add(what string, first uint64, sums [][32]byte, n uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case first != uint64(len(s.sums)):
		return fmt.Errorf("the backup's %s hashes start at range %d, %d expected", what, first, len(s.sums))
	case first+uint64(len(sums)) > n:
		return fmt.Errorf("the backup's %s hashes end at range %d, past the %d it has", what, first+uint64(len(sums)), n)
	}
	s.sums = append(s.sums, sums...)
	close(s.arrived)
	s.arrived = make(chan struct{})
	return nil
}

// Arrived returns a channel that closes when more hashes arrive than
// there were at the call.
func (s *rangeSums) Arrived() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.arrived
}

// compare decides items (disk blocks or pages, in increasing order, each
// range perRange of them) in turn: it hashes each range they fall in with
// hashRange, once, has took see each item decided (nil: nothing to see),
// and appends to kept the items of the ranges whose hash the backup's
// shares. It stops at the first item whose range's hash has not arrived,
// or that hashRange fails, and returns how many items it decided.
func (s *rangeSums) compare(items []uint64, perRange uint64, kept []uint64, hashRange func(r uint64) ([32]byte, error), took func(item uint64)) (int, []uint64, error) {
	for i, item := range items {
		r := item / perRange
		if !s.decided || s.last != r {
			theirs, ok := s.sum(r)
			if !ok {
				return i, kept, nil
			}
			mine, err := hashRange(r)
			if err != nil {
				return i, kept, err
			}
			s.decided, s.last, s.equal = true, r, mine == theirs
		}
		if took != nil {
			took(item)
		}
		if s.equal {
			kept = append(kept, item)
			s.kept++
		}
	}
	return len(items), kept, nil
}

// Kept is how many items (disk blocks, pages) compare found the backup
// has.
func (s *rangeSums) Kept() int { return s.kept }

// sum returns range r's hash from the backup, if it has arrived.
func (s *rangeSums) sum(r uint64) ([32]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r >= uint64(len(s.sums)) {
		return [32]byte{}, false
	}
	return s.sums[r], true
}

// Compare decides blocks (DiskBlockSize blocks, in increasing order) in
// turn: it appends to kept those of the ranges whose hash the backup's
// image shares, which the sync carries as KEPT records, and stops at the
// first block whose range's hash has not arrived yet. It returns how many
// blocks it decided, blocks[:n]: all go in the sync, those in kept without
// their data. Call it on the first pass's blocks, as it reads them (see
// above).
func (b *BackupImage) Compare(blocks, kept []uint64) (n int, _ []uint64, err error) {
	if b.buf == nil {
		b.buf = make([]byte, format.DiskHashRange)
	}
	return b.compare(blocks, blocksPerRange, kept, func(r uint64) ([32]byte, error) {
		sum, err := format.HashDiskRange(b.disk, b.size, r, b.buf)
		if err != nil {
			return sum, fmt.Errorf("hashing the disk to compare with the backup's image: %w", err)
		}
		return sum, nil
	}, nil)
}
