package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// A joining backup that holds most of the guest already — it rejoins
// after a failover, or lost its link and comes back — describes what it
// holds by range hashes, and the primary's first full-sync pass carries
// each range whose hash equals its own as KEPT records, without their
// data. So does a backup whose sync failed on a connection (a rejected
// checkpoint): the next sync asks for them again (FlagSendHashes). Two
// messages do it, one per thing a backup holds: ImageHashes for its disk
// image (a mirrored disk), MemoryHashes for its guest memory. Both carry,
// for every range of the thing in order, in messages of at most
// MaxRangeHashes ranges, the SHA-256 of each range, and name the sync that
// asked for them.
//
// Payload of both (little-endian):
//
//	alg:u8 (1 SHA-256) generation:u64 epoch:u64 size:u64 first:u64
//	count:u32 (1..MaxRangeHashes) count × digest[32]
//
// generation and epoch are the sync whose first message asked for them
// (FlagSendHashes), both zero for those the primary's Hello asked for;
// size is the disk's bytes (ImageHashes) or the memory's pages
// (MemoryHashes); the ranges first .. first+count-1 lie inside it.

// HashesFor names the sync a backup's range hashes were asked for:
// Generation and Epoch of the sync whose first message asked
// (FlagSendHashes), or both zero for those the primary's Hello asked for.
// A primary compares a sync with the hashes named by it only: the backup
// hashes what it holds once the asking message is applied, and what it
// holds changes after that only by that sync's messages.
type HashesFor struct {
	Generation, Epoch uint64
}

// HelloHashes names the hashes a primary's Hello asked for.
var HelloHashes = HashesFor{}

// ImageHashes is part of a backup's own disk image (a mirrored disk),
// described by range: Sums[i] is the SHA-256 of range First+i of a disk of
// DiskSize bytes (HashDiskRange: DiskHashRange bytes, the last range the
// rest of the disk). A primary asks for them in its Hello
// (WantImageHashes), and again in a later sync's first message
// (FlagSendHashes).
type ImageHashes struct {
	For      HashesFor
	DiskSize int64
	First    uint64
	Sums     [][32]byte
}

// MemoryHashes is part of a backup's guest memory, described by range:
// Sums[i] is the SHA-256 of range First+i of a memory of MemPages pages
// (HashMemoryRange: MemHashRangePages pages, the last range the rest). A
// primary asks for them in its Hello (WantMemoryHashes); a backup whose
// memory holds a guest state, or part of one, offers them in its own
// (SendsMemoryHashes), and sends them only if both did. A primary whose
// Hello asked for them asks again in a later sync's first message
// (FlagSendHashes), and the backup then sends them, offered or not.
type MemoryHashes struct {
	For      HashesFor
	MemPages uint64
	First    uint64
	Sums     [][32]byte
}

// MaxRangeHashes bounds the ranges of one ImageHashes or MemoryHashes
// message (1 GiB of disk or memory, 128 KiB of payload).
const MaxRangeHashes = 4096

// MemHashRangePages is the span of guest memory one memory hash covers,
// in pages: as much as a disk hash range.
const MemHashRangePages = DiskHashRange / PageSize

// MemHashRanges is the number of hash ranges of a memory of pages pages.
func MemHashRanges(pages uint64) uint64 { return (pages + MemHashRangePages - 1) / MemHashRangePages }

// HashMemoryRange is the SHA-256 of range r of mem, a guest memory
// (page-frame i at mem[i*PageSize:]).
func HashMemoryRange(mem []byte, r uint64) [32]byte {
	off := r * MemHashRangePages * PageSize
	return rangeSum(mem[off:min(off+MemHashRangePages*PageSize, uint64(len(mem)))])
}

// rangeSum is the SHA-256 of b, a range of memory or disk (or the rest of
// one). Most of an idle guest's memory, and of a sparse disk, is zero: a
// whole range of zeros is found so (memequal runs at memory speed, SHA-256
// at 1.6 GB/s a core here) and takes the zero range's hash, computed once.
func rangeSum(b []byte) [32]byte {
	if len(b) == DiskHashRange && bytes.Equal(b, zeroRange[:]) {
		return zeroRangeSum
	}
	return sha256.Sum256(b)
}

var (
	zeroRange    [DiskHashRange]byte
	zeroRangeSum = sha256.Sum256(zeroRange[:])
)

const rangeHashesFixed = 1 + 8 + 8 + 8 + 8 + 4

// Append appends h's payload to b.
func (h ImageHashes) Append(b []byte) []byte {
	return appendRangeHashes(b, h.For, uint64(h.DiskSize), h.First, h.Sums)
}

// Append appends h's payload to b.
func (h MemoryHashes) Append(b []byte) []byte {
	return appendRangeHashes(b, h.For, h.MemPages, h.First, h.Sums)
}

func appendRangeHashes(b []byte, f HashesFor, size, first uint64, sums [][32]byte) []byte {
	b = append(b, byte(HashSHA256))
	b = binary.LittleEndian.AppendUint64(b, f.Generation)
	b = binary.LittleEndian.AppendUint64(b, f.Epoch)
	b = binary.LittleEndian.AppendUint64(b, size)
	b = binary.LittleEndian.AppendUint64(b, first)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(sums)))
	for _, s := range sums {
		b = append(b, s[:]...)
	}
	return b
}

// DecodeImageHashes parses an ImageHashes payload.
func DecodeImageHashes(p []byte) (ImageHashes, error) {
	f, size, first, sums, err := decodeRangeHashes(p, "image hashes", "disk of %d bytes", MaxDiskSize,
		func(size uint64) uint64 { return DiskHashRanges(int64(size)) })
	if err != nil {
		return ImageHashes{}, err
	}
	return ImageHashes{For: f, DiskSize: int64(size), First: first, Sums: sums}, nil
}

// DecodeMemoryHashes parses a MemoryHashes payload.
func DecodeMemoryHashes(p []byte) (MemoryHashes, error) {
	f, pages, first, sums, err := decodeRangeHashes(p, "memory hashes", "memory of %d pages", MaxMemPages, MemHashRanges)
	if err != nil {
		return MemoryHashes{}, err
	}
	return MemoryHashes{For: f, MemPages: pages, First: first, Sums: sums}, nil
}

// decodeRangeHashes parses either payload: what names it in errors, thing
// the thing its size describes (a format with one %d), at most maxSize;
// ranges is how many ranges a thing of that size has.
func decodeRangeHashes(p []byte, what, thing string, maxSize uint64, ranges func(size uint64) uint64) (f HashesFor, size, first uint64, sums [][32]byte, err error) {
	if len(p) < rangeHashesFixed || HashAlg(p[0]) != HashSHA256 {
		return f, 0, 0, nil, fmt.Errorf("decode %s: %w: %d bytes, algorithm %d", what, ErrBadMessage, len(p), firstByte(p))
	}
	f = HashesFor{Generation: binary.LittleEndian.Uint64(p[1:]), Epoch: binary.LittleEndian.Uint64(p[9:])}
	size = binary.LittleEndian.Uint64(p[17:])
	first = binary.LittleEndian.Uint64(p[25:])
	count := uint64(binary.LittleEndian.Uint32(p[33:]))
	p = p[rangeHashesFixed:]
	switch {
	case f.Generation == 0 && f.Epoch != 0:
		return f, 0, 0, nil, fmt.Errorf("decode %s: %w: for epoch %d of generation 0", what, ErrBadMessage, f.Epoch)
	case size == 0 || size > maxSize:
		return f, 0, 0, nil, fmt.Errorf("decode %s: %w: a "+thing, what, ErrBadMessage, size)
	case count == 0 || count > MaxRangeHashes || count*32 != uint64(len(p)):
		return f, 0, 0, nil, fmt.Errorf("decode %s: %w: %d hashes in %d bytes (1 to %d)", what, ErrBadMessage, count, len(p), MaxRangeHashes)
	case first >= ranges(size) || count > ranges(size)-first:
		return f, 0, 0, nil, fmt.Errorf("decode %s: %w: ranges %d to %d of a "+thing+", which has %d", what, ErrBadMessage, first, first+count-1, size, ranges(size))
	}
	sums = make([][32]byte, count)
	for i := range sums {
		copy(sums[i][:], p[i*32:])
	}
	return f, size, first, sums, nil
}
