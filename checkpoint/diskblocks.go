package checkpoint

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"

	"github.com/pierrec/lz4/v4"
)

// Mirrored disks (--disk-mode mirrored): each host has its own disk image.
// The backup's image gets the guest's writes from each committing
// checkpoint's disk section (DiskLog) and, during a full sync, the image
// itself, block by block, in the disk-blocks section of the sync's
// messages, as pages carry memory.
//
// Disk-blocks section payload (little-endian):
//
//	diskSize:u64 count:u32
//	count × (gap:uvarint enc:u8 [RAW: the block | LZ4: n:uvarint, n bytes])
//
// Blocks are DiskBlockSize bytes, the last one possibly shorter (the rest of
// the disk); gap is the block index minus the previous record's (the first
// record's index itself), so indexes strictly increase. Only ZERO, RAW,
// LZ4 and KEPT encodings are used; KEPT (no payload) says the backup's
// image has the block already, as the hashes of its image that it sent
// showed (ImageHashes). The section is allowed on sync kinds only; a sync
// commit must have carried, since its sync started, every block of the
// disk, as it must every page.

// DiskBlockSize is the unit in which a mirrored disk is copied and its
// writes tracked during a full sync.
const DiskBlockSize = 64 << 10

// MaxDiskSize bounds the disk size a disk-blocks section may name (64 TiB).
const MaxDiskSize = 1 << 46

// DiskBlocks is the number of blocks of a disk of size bytes.
func DiskBlocks(size int64) uint64 { return uint64((size + DiskBlockSize - 1) / DiskBlockSize) }

// blockLen is the length of block i of a disk of size bytes.
func blockLen(size int64, i uint64) int {
	return int(min(DiskBlockSize, size-int64(i)*DiskBlockSize))
}

// BlockRecord is one disk block as carried in a checkpoint: Data aliases
// the checkpoint buffer (nil for ZERO, the block for RAW, the lz4 block for
// LZ4, not yet decompressed).
type BlockRecord struct {
	Index uint64
	Enc   Encoding
	Data  []byte
}

// DiskBlock is one staged disk block for the backup's image: Data (the
// block's contents) goes at byte offset Off.
type DiskBlock struct {
	Off  int64
	Data []byte
}

// diskBlocksHeader is the section's fixed part: diskSize and count.
const diskBlocksHeader = 8 + 4

// blockEncoder is the Encoder's part for disk blocks: the section's records
// of the checkpoint begun, and which blocks the sync in progress has sent.
type blockEncoder struct {
	size  int64    // the disk's size; 0: no mirrored disk
	sent  []uint64 // bit per block sent since the sync started
	buf   []byte   // records of the checkpoint begun
	count uint32
	last  uint64 // index of the last record, if count > 0
	lz    [DiskBlockSize]byte
}

// SetDiskSize says the guest's disk is mirrored and size bytes long: every
// full sync must carry each of its blocks (AddDiskBlock) before it commits.
// Call before the first checkpoint.
func (e *Encoder) SetDiskSize(size int64) error {
	if size <= 0 || size > MaxDiskSize {
		return fmt.Errorf("set disk size: %w: %d bytes (limit %d)", ErrBadSection, size, int64(MaxDiskSize))
	}
	e.blocks.size = size
	e.blocks.sent = make([]uint64, (DiskBlocks(size)+63)/64)
	return nil
}

// AddDiskBlock adds block index of the mirrored disk, whose current contents
// are block (the block's length: DiskBlockSize but for a shorter last one),
// to the sync message begun. Blocks come in strictly increasing order
// within a message. An error leaves the checkpoint as it was.
func (e *Encoder) AddDiskBlock(index uint64, block []byte) error {
	b := &e.blocks
	if err := e.checkDiskBlock(index); err != nil {
		return err
	}
	if len(block) != blockLen(b.size, index) {
		return fmt.Errorf("add disk block %d: %w: %d bytes, want %d", index, ErrBadDiskBlock, len(block), blockLen(b.size, index))
	}
	b.appendGap(index)
	if isZero(block) {
		b.buf = append(b.buf, byte(EncZero))
	} else if n, err := e.comp.CompressBlock(block, b.lz[:len(block)-1]); err == nil && n > 0 {
		b.buf = append(b.buf, byte(EncLZ4))
		b.buf = binary.AppendUvarint(b.buf, uint64(n))
		b.buf = append(b.buf, b.lz[:n]...)
	} else {
		b.buf = append(b.buf, byte(EncRaw))
		b.buf = append(b.buf, block...)
	}
	b.record(index)
	return nil
}

// AddKeptDiskBlock adds block index of the mirrored disk to the sync
// message begun as one the backup's image holds already (KEPT): it counts
// as sent, and the backup writes nothing. The caller knows it from the
// backup's image hashes (ImageHashes). Order and errors as AddDiskBlock.
func (e *Encoder) AddKeptDiskBlock(index uint64) error {
	if err := e.checkDiskBlock(index); err != nil {
		return err
	}
	e.blocks.appendGap(index)
	e.blocks.buf = append(e.blocks.buf, byte(EncKept))
	e.blocks.record(index)
	return nil
}

// checkDiskBlock says why block index may not be added next, if it may
// not.
func (e *Encoder) checkDiskBlock(index uint64) error {
	b := &e.blocks
	switch {
	case !e.active:
		return fmt.Errorf("add disk block %d: %w: no checkpoint begun", index, ErrEncoderState)
	case e.h.Kind == KindEpoch:
		return fmt.Errorf("add disk block %d: %w: disk blocks on an epoch checkpoint", index, ErrForbiddenSection)
	case b.size == 0:
		return fmt.Errorf("add disk block %d: %w: no mirrored disk (SetDiskSize)", index, ErrEncoderState)
	case index >= DiskBlocks(b.size):
		return fmt.Errorf("add disk block %d: %w: the disk has %d blocks", index, ErrBadDiskBlock, DiskBlocks(b.size))
	case b.count > 0 && index <= b.last:
		return fmt.Errorf("add disk block %d: %w: after block %d", index, ErrBadDiskBlock, b.last)
	}
	return nil
}

// appendGap appends a record's gap: index less the last record's.
func (b *blockEncoder) appendGap(index uint64) {
	gap := index
	if b.count > 0 {
		gap = index - b.last
	}
	b.buf = binary.AppendUvarint(b.buf, gap)
}

// record counts the record of block index just appended as sent.
func (b *blockEncoder) record(index uint64) {
	b.count++
	b.last = index
	b.sent[index/64] |= 1 << (index % 64)
}

// isZero says whether p is all zero bytes.
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), PageSize)
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// begin starts the records of a checkpoint of kind; start clears what the
// sync has sent.
func (b *blockEncoder) begin(start bool) {
	b.buf, b.count, b.last = b.buf[:0], 0, 0
	if start {
		clear(b.sent)
	}
}

// allSent says whether the sync in progress has sent every block (true
// without a mirrored disk).
func (b *blockEncoder) allSent() bool {
	return b.size == 0 || ones(b.sent) == DiskBlocks(b.size)
}

// ones is the number of bits set in a bitset.
func ones(words []uint64) uint64 {
	n := uint64(0)
	for _, w := range words {
		n += uint64(bits.OnesCount64(w))
	}
	return n
}

// appendSection appends the disk-blocks section if the checkpoint has
// records, and says whether it did.
func (b *blockEncoder) appendSection(dst []byte) ([]byte, bool) {
	if b.count == 0 {
		return dst, false
	}
	var sh [sectionSize]byte
	putSection(sh[:], SectionDiskBlocks, uint32(diskBlocksHeader+len(b.buf)))
	dst = append(dst, sh[:]...)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(b.size))
	dst = binary.LittleEndian.AppendUint32(dst, b.count)
	return append(dst, b.buf...), true
}

// decodeDiskBlocks parses a disk-blocks section into ck.DiskSize and
// ck.Blocks, reusing its storage; Data slices alias p.
func decodeDiskBlocks(p []byte, ck *Checkpoint) error {
	if len(p) < diskBlocksHeader {
		return fmt.Errorf("%w: disk-blocks section of %d bytes has no header", ErrBadSection, len(p))
	}
	size := binary.LittleEndian.Uint64(p)
	count := uint64(binary.LittleEndian.Uint32(p[8:]))
	p = p[diskBlocksHeader:]
	if size == 0 || size > MaxDiskSize {
		return fmt.Errorf("%w: disk of %d bytes (limit %d)", ErrBadSection, size, int64(MaxDiskSize))
	}
	nblocks := DiskBlocks(int64(size))
	if count > nblocks || count > uint64(len(p)/minRecord) {
		return fmt.Errorf("%w: %d disk blocks claimed in %d bytes for a %d-block disk", ErrBadSection, count, len(p), nblocks)
	}
	ck.DiskSize = int64(size)
	var index uint64
	for i := range count {
		gap, n := binary.Uvarint(p)
		if n <= 0 || len(p) < n+1 {
			return fmt.Errorf("%w: block record %d: header cut short", ErrBadDiskBlock, i)
		}
		if i > 0 && gap == 0 {
			return fmt.Errorf("%w: block record %d repeats block %d", ErrBadDiskBlock, i, index)
		}
		if gap >= nblocks || index+gap >= nblocks {
			return fmt.Errorf("%w: block record %d past the %d-block disk", ErrBadDiskBlock, i, nblocks)
		}
		index += gap
		enc := Encoding(p[n])
		p = p[n+1:]
		want := blockLen(int64(size), index)
		r := BlockRecord{Index: index, Enc: enc}
		switch enc {
		case EncZero, EncKept:
		case EncRaw:
			if len(p) < want {
				return fmt.Errorf("%w: block %d: raw record of %d bytes with %d left", ErrBadDiskBlock, index, want, len(p))
			}
			r.Data, p = p[:want:want], p[want:]
		case EncLZ4:
			m, k := binary.Uvarint(p)
			if k <= 0 || m == 0 || m >= uint64(want) || m > uint64(len(p)-k) {
				return fmt.Errorf("%w: block %d: lz4 payload of %d bytes (block %d, %d left)", ErrBadDiskBlock, index, m, want, len(p)-max(k, 0))
			}
			r.Data, p = p[k:k+int(m):k+int(m)], p[k+int(m):]
		default:
			return fmt.Errorf("%w: block %d: encoding %v", ErrBadDiskBlock, index, enc)
		}
		ck.Blocks = append(ck.Blocks, r)
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d bytes after the last disk block", ErrBadSection, len(p))
	}
	return nil
}

// WriteImage writes what r changes on a mirrored disk's image: its blocks,
// then its writes, in that order (see Result).
func (r Result) WriteImage(image io.WriterAt) error {
	for _, b := range r.Blocks {
		if _, err := image.WriteAt(b.Data, b.Off); err != nil {
			return fmt.Errorf("writing %d bytes of a full sync at %d (%v): %w", len(b.Data), b.Off, r.Header, err)
		}
	}
	for _, w := range r.Writes {
		if _, err := image.WriteAt(w.Data, w.Off); err != nil {
			return fmt.Errorf("writing the guest's write of %d bytes at %d (epoch %d): %w", len(w.Data), w.Off, w.Epoch, err)
		}
	}
	return nil
}

// blockBackup is the Backup's part for a mirrored disk.
type blockBackup struct {
	size    int64    // the disk's size; 0: not mirrored
	covered []uint64 // StateSyncing: blocks written since the sync started
	stage   []byte   // decompressed blocks of the checkpoint being received
	staged  []DiskBlock
	writes  []DiskWrite // the disk writes of the last checkpoint received
}

// MirrorDisk says this backup keeps its own image of a size-byte disk: full
// syncs must carry every block of it, and Receive returns the blocks and
// writes to put on the image (Result.Blocks, Result.Writes). Call before
// the first Receive.
func (b *Backup) MirrorDisk(size int64) error {
	if size <= 0 || size > MaxDiskSize {
		return fmt.Errorf("mirror disk: %w: %d bytes (limit %d)", ErrBadSection, size, int64(MaxDiskSize))
	}
	b.blocks.size = size
	b.blocks.covered = make([]uint64, (DiskBlocks(size)+63)/64)
	return nil
}

// stageBlocks checks and decompresses the checkpoint's disk blocks into
// b.blocks.staged; start and commit say whether it starts or commits a
// sync. It writes nothing but staging.
func (b *Backup) stageBlocks(start, commit bool) error {
	ck, bb := &b.ck, &b.blocks
	bb.staged = bb.staged[:0]
	if len(ck.Blocks) > 0 {
		switch {
		case bb.size == 0:
			return fmt.Errorf("%w: disk blocks, but this backup's disk is not mirrored", ErrDiskMismatch)
		case ck.DiskSize != bb.size:
			return fmt.Errorf("%w: blocks of a %d-byte disk, this backup's is %d", ErrDiskMismatch, ck.DiskSize, bb.size)
		}
	}
	need := 0
	for _, r := range ck.Blocks {
		if r.Enc == EncLZ4 {
			need += DiskBlockSize
		}
	}
	if cap(bb.stage) < need {
		bb.stage = make([]byte, need)
	}
	slot := 0
	for _, r := range ck.Blocks {
		want := blockLen(bb.size, r.Index)
		var data []byte
		switch r.Enc {
		case EncKept:
			continue // the image has it: nothing to write
		case EncZero:
			data = zeroBlock[:want]
		case EncRaw:
			data = r.Data
		case EncLZ4:
			data = bb.stage[slot : slot+want : slot+want]
			slot += DiskBlockSize
			if n, err := lz4.UncompressBlock(r.Data, data); err != nil || n != want {
				return fmt.Errorf("%w: block %d: lz4 payload decodes to %d bytes, want %d (%v)", ErrBadDiskBlock, r.Index, n, want, err)
			}
		}
		bb.staged = append(bb.staged, DiskBlock{Off: int64(r.Index) * DiskBlockSize, Data: data})
	}
	if len(ck.DiskHashes) > 0 && ck.DiskHashSize != bb.size {
		return fmt.Errorf("%w: hashes of a %d-byte disk, this backup's is %d", ErrDiskMismatch, ck.DiskHashSize, bb.size)
	}
	if commit && bb.size > 0 {
		have := uint64(0)
		if !start {
			have = ones(bb.covered)
		}
		for _, r := range ck.Blocks {
			if start || bb.covered[r.Index/64]&(1<<(r.Index%64)) == 0 {
				have++
			}
		}
		if n := DiskBlocks(bb.size); have != n {
			return fmt.Errorf("%w: %d of %d disk blocks", ErrIncompleteSync, have, n)
		}
	}
	return nil
}

// applyBlocks records the staged blocks as covered by the sync in progress.
func (b *Backup) applyBlocks(start bool) {
	bb := &b.blocks
	if start {
		clear(bb.covered)
	}
	for _, r := range b.ck.Blocks {
		bb.covered[r.Index/64] |= 1 << (r.Index % 64)
	}
}

// zeroBlock is the contents of a ZERO block.
var zeroBlock [DiskBlockSize]byte
