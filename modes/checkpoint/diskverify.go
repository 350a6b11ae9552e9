package checkpoint

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/vmm"
)

// --verify with a mirrored disk: each committing checkpoint carries the
// hashes of the disk ranges written since the last one (at most
// maxHashedRanges; the rest wait for the next) and of one more range in
// turn, so that a range nobody writes is compared too, once per
// DiskHashRanges checkpoints. They are taken while the guest is paused, of
// the disk as the guest sees it. The backup hashes the same ranges of its
// image once the checkpoint's writes are on it.

// maxHashedRanges bounds the ranges hashed in one pause (1 MiB read and
// hashed, about a millisecond).
const maxHashedRanges = 4

// diskHasher is a primary's side. Used by the epoch loop only.
type diskHasher struct {
	disk    vmm.Disk         // the disk as the guest sees it (the HeldDisk)
	written *dirtylog.Blocks // ranges written since the last capture
	next    uint64           // the range compared next in turn
	buf     []byte
	taken   []uint64
}

func newDiskHasher(h *HeldDisk) *diskHasher {
	return &diskHasher{disk: h, written: h.TrackBlocks(format.DiskHashRange), buf: make([]byte, format.DiskHashRange)}
}

// capture hashes the ranges due at this checkpoint. Precondition: the guest
// is paused.
func (d *diskHasher) capture() ([]format.DiskRangeHash, error) {
	size := d.disk.Size()
	d.taken = d.written.Take(d.taken[:0])
	for _, r := range d.taken[min(len(d.taken), maxHashedRanges):] {
		d.written.Mark(int64(r)*format.DiskHashRange, 1) // the next checkpoint's
	}
	turn := d.next % format.DiskHashRanges(size)
	d.next = turn + 1
	ranges := append(d.taken[:min(len(d.taken), maxHashedRanges)], turn) // the rest are marked again
	slices.Sort(ranges)
	ranges = slices.Compact(ranges)
	out := make([]format.DiskRangeHash, len(ranges))
	for i, r := range ranges {
		sum, err := hashRange(d.disk, r, d.buf)
		if err != nil {
			return nil, err
		}
		out[i] = format.DiskRangeHash{Range: r, Sum: sum}
	}
	return out, nil
}

// hashRange is the SHA-256 of range r of disk, read through buf
// (DiskHashRange bytes).
func hashRange(disk interface {
	ReadAt([]byte, int64) (int, error)
	Size() int64
}, r uint64, buf []byte) ([32]byte, error) {
	off := int64(r) * format.DiskHashRange
	n := min(int64(len(buf)), disk.Size()-off)
	if _, err := disk.ReadAt(buf[:n], off); err != nil {
		return [32]byte{}, fmt.Errorf("reading disk range %d (%d bytes at %d) for --verify: %w", r, n, off, err)
	}
	return sha256.Sum256(buf[:n]), nil
}

// ErrImageDiffers marks a backup's image found to differ from the
// primary's disk (--verify): the backup drops its committed state and asks
// for a full sync, which copies every block again.
var ErrImageDiffers = errors.New("the backup's disk image differs from the primary's")

// verifyImage compares the backup's image with the hashes a checkpoint
// carried.
func (b *Backup) verifyImage(hashes []format.DiskRangeHash) error {
	if len(hashes) == 0 {
		return nil
	}
	if b.hashBuf == nil {
		b.hashBuf = make([]byte, format.DiskHashRange)
	}
	for _, h := range hashes {
		got, err := hashRange(b.disk, h.Range, b.hashBuf)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrImage, err)
		}
		if got != h.Sum {
			off := int64(h.Range) * format.DiskHashRange
			return fmt.Errorf("%w: range %d (bytes %d to %d) hashes to %x, the primary's to %x",
				ErrImageDiffers, h.Range, off, min(off+format.DiskHashRange, b.disk.Size()), got[:8], h.Sum[:8])
		}
	}
	return nil
}
