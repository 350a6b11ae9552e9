package checkpoint

import (
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
		sum, err := format.HashDiskRange(d.disk, size, r, d.buf)
		if err != nil {
			return nil, err
		}
		out[i] = format.DiskRangeHash{Range: r, Sum: sum}
	}
	return out, nil
}

// verifyImage compares the backup's image with the hashes a checkpoint
// carried: format.ErrImageDiffers, or ErrImage if the image cannot be read.
func (b *Backup) verifyImage(hashes []format.DiskRangeHash) error {
	if len(hashes) == 0 {
		return nil
	}
	if b.hashBuf == nil {
		b.hashBuf = make([]byte, format.DiskHashRange)
	}
	err := format.CompareImage(b.imageIO, b.disk.Size(), hashes, b.hashBuf)
	if err != nil && !errors.Is(err, format.ErrImageDiffers) {
		return fmt.Errorf("%w: %w", ErrImage, err)
	}
	return err
}
