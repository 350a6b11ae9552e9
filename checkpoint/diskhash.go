package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Disk hashes (--verify with a mirrored disk): a committing checkpoint may
// carry the SHA-256 of some ranges of the disk as its committed guest sees
// it — the ranges written since the last such checkpoint, and one more the
// primary chooses in turn, so that every range is compared now and then,
// written or not. The backup hashes the same ranges of its own image after
// writing the checkpoint's writes: a difference is a corrupt image.
//
// Disk-hash section payload (little-endian):
//
//	alg:u8 (1 SHA-256) diskSize:u64 count:u32
//	count × (range:u64 digest[32])
//
// Ranges are DiskHashRange bytes (the last one the rest of the disk), in
// strictly increasing order, each inside the disk.

// DiskHashRange is the span of the disk one hash covers.
const DiskHashRange = 256 << 10

// DiskHashRanges is the number of hash ranges of a disk of size bytes.
func DiskHashRanges(size int64) uint64 { return uint64((size + DiskHashRange - 1) / DiskHashRange) }

// DiskRangeHash is the hash of range Range of the disk.
type DiskRangeHash struct {
	Range uint64
	Sum   [32]byte
}

const (
	diskHashHeader = 1 + 8 + 4
	diskHashRecord = 8 + 32
)

// SetDiskHashes makes the committing checkpoint begun carry hashes of
// ranges of a disk of size bytes (in increasing range order). Finish
// checks them.
func (e *Encoder) SetDiskHashes(size int64, hashes []DiskRangeHash) error {
	if !e.active {
		return fmt.Errorf("set disk hashes: %w: no checkpoint begun", ErrEncoderState)
	}
	e.diskHashes, e.diskHashSize = hashes, size
	return nil
}

// checkDiskHashes applies the section's rules.
func checkDiskHashes(size int64, hashes []DiskRangeHash) error {
	if size <= 0 || size > MaxDiskSize {
		return fmt.Errorf("%w: disk hashes of a %d-byte disk", ErrBadSection, size)
	}
	n := DiskHashRanges(size)
	for i, h := range hashes {
		if h.Range >= n || i > 0 && h.Range <= hashes[i-1].Range {
			return fmt.Errorf("%w: hash %d of range %d (the disk has %d, in increasing order)", ErrBadSection, i, h.Range, n)
		}
	}
	return nil
}

// appendDiskHashes appends the section (header included).
func appendDiskHashes(b []byte, size int64, hashes []DiskRangeHash) []byte {
	var sh [sectionSize]byte
	putSection(sh[:], SectionDiskHash, uint32(diskHashHeader+len(hashes)*diskHashRecord))
	b = append(b, sh[:]...)
	b = append(b, byte(HashSHA256))
	b = binary.LittleEndian.AppendUint64(b, uint64(size))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(hashes)))
	for _, h := range hashes {
		b = binary.LittleEndian.AppendUint64(b, h.Range)
		b = append(b, h.Sum[:]...)
	}
	return b
}

// decodeDiskHashes parses a disk-hash section into ck.DiskHashes and
// ck.DiskHashSize, reusing its storage.
func decodeDiskHashes(p []byte, ck *Checkpoint) error {
	if len(p) < diskHashHeader || HashAlg(p[0]) != HashSHA256 {
		return fmt.Errorf("%w: disk-hash section of %d bytes, algorithm %d", ErrBadSection, len(p), firstByte(p))
	}
	size := binary.LittleEndian.Uint64(p[1:])
	count := uint64(binary.LittleEndian.Uint32(p[9:]))
	p = p[diskHashHeader:]
	if size > MaxDiskSize || count*diskHashRecord != uint64(len(p)) {
		return fmt.Errorf("%w: %d disk hashes of a %d-byte disk in %d bytes", ErrBadSection, count, size, len(p))
	}
	for range count {
		var h DiskRangeHash
		h.Range = binary.LittleEndian.Uint64(p)
		copy(h.Sum[:], p[8:diskHashRecord])
		ck.DiskHashes = append(ck.DiskHashes, h)
		p = p[diskHashRecord:]
	}
	ck.DiskHashSize = int64(size)
	return checkDiskHashes(ck.DiskHashSize, ck.DiskHashes)
}

// HashDiskRange is the SHA-256 of range r of a disk of size bytes, read
// from disk through buf (DiskHashRange bytes).
func HashDiskRange(disk io.ReaderAt, size int64, r uint64, buf []byte) ([32]byte, error) {
	off := int64(r) * DiskHashRange
	n := min(int64(len(buf)), size-off)
	if _, err := disk.ReadAt(buf[:n], off); err != nil {
		return [32]byte{}, fmt.Errorf("reading disk range %d (%d bytes at %d) to hash it: %w", r, n, off, err)
	}
	return rangeSum(buf[:n]), nil
}

// ErrImageDiffers marks a mirrored disk's image found to differ from the
// hashes of the primary's disk (CompareImage).
var ErrImageDiffers = errors.New("the disk image differs from the primary's")

// CompareImage hashes the ranges of image (a disk of size bytes) that
// hashes name, through buf (DiskHashRange bytes), and says where the first
// differs (ErrImageDiffers); an error reading the image is returned as is.
func CompareImage(image io.ReaderAt, size int64, hashes []DiskRangeHash, buf []byte) error {
	for _, h := range hashes {
		got, err := HashDiskRange(image, size, h.Range, buf)
		if err != nil {
			return err
		}
		if got != h.Sum {
			off := int64(h.Range) * DiskHashRange
			return fmt.Errorf("%w: range %d (bytes %d to %d) hashes to %x, the primary's to %x",
				ErrImageDiffers, h.Range, off, min(off+DiskHashRange, size), got[:8], h.Sum[:8])
		}
	}
	return nil
}
