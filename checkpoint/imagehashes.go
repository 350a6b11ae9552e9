package checkpoint

import (
	"encoding/binary"
	"fmt"
)

// ImageHashes is part of a backup's own disk image (a mirrored disk),
// described by range: Sums[i] is the SHA-256 of range First+i of a disk of
// DiskSize bytes (HashDiskRange: DiskHashRange bytes, the last range the
// rest of the disk). A primary that asks for them in its Hello
// (WantImageHashes) gets them for every range, in order, in messages of at
// most MaxImageHashes ranges, and sends in its first full sync the blocks
// of every range whose hash equals its own disk's as KEPT, without their
// data: a backup rejoining after a failover, or one that lost its state,
// has most of the disk already.
//
// Payload (little-endian):
//
//	alg:u8 (1 SHA-256) diskSize:u64 first:u64 count:u32 (1..MaxImageHashes)
//	count × digest[32]
//
// The ranges first .. first+count-1 lie inside the disk.
type ImageHashes struct {
	DiskSize int64
	First    uint64
	Sums     [][32]byte
}

// MaxImageHashes bounds the ranges of one ImageHashes message (1 GiB of
// disk, 128 KiB of payload).
const MaxImageHashes = 4096

const imageHashesFixed = 1 + 8 + 8 + 4

// Append appends h's payload to b.
func (h ImageHashes) Append(b []byte) []byte {
	b = append(b, byte(HashSHA256))
	b = binary.LittleEndian.AppendUint64(b, uint64(h.DiskSize))
	b = binary.LittleEndian.AppendUint64(b, h.First)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(h.Sums)))
	for _, s := range h.Sums {
		b = append(b, s[:]...)
	}
	return b
}

// DecodeImageHashes parses an ImageHashes payload.
func DecodeImageHashes(p []byte) (ImageHashes, error) {
	if len(p) < imageHashesFixed || HashAlg(p[0]) != HashSHA256 {
		return ImageHashes{}, fmt.Errorf("decode image hashes: %w: %d bytes, algorithm %d", ErrBadMessage, len(p), firstByte(p))
	}
	size := binary.LittleEndian.Uint64(p[1:])
	first := binary.LittleEndian.Uint64(p[9:])
	count := uint64(binary.LittleEndian.Uint32(p[17:]))
	p = p[imageHashesFixed:]
	switch {
	case size == 0 || size > MaxDiskSize:
		return ImageHashes{}, fmt.Errorf("decode image hashes: %w: a %d-byte disk", ErrBadMessage, size)
	case count == 0 || count > MaxImageHashes || count*32 != uint64(len(p)):
		return ImageHashes{}, fmt.Errorf("decode image hashes: %w: %d hashes in %d bytes (1 to %d)", ErrBadMessage, count, len(p), MaxImageHashes)
	case first >= DiskHashRanges(int64(size)) || count > DiskHashRanges(int64(size))-first:
		return ImageHashes{}, fmt.Errorf("decode image hashes: %w: ranges %d to %d of a disk of %d", ErrBadMessage, first, first+count-1, DiskHashRanges(int64(size)))
	}
	h := ImageHashes{DiskSize: int64(size), First: first, Sums: make([][32]byte, count)}
	for i := range h.Sums {
		copy(h.Sums[i][:], p[i*32:])
	}
	return h, nil
}
