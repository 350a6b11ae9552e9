package checkpoint

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// PageRecord is one page as carried in a checkpoint. Data aliases the
// checkpoint buffer: nil for ZERO, PageSize bytes for RAW, the lz4 block
// for LZ4 and XORLZ4 (not yet decompressed).
type PageRecord struct {
	PFN  uint64
	Enc  Encoding
	Data []byte
}

// Checkpoint is a decoded checkpoint whose framing, checksum, header and
// section structure have been verified. Its slices alias the buffer it was
// decoded from; page payloads are verified when a Backup stages them.
type Checkpoint struct {
	Header  Header
	Machine []byte // machine-state blob; nil on a sync round
	MemHash []byte // HashMemory of memory after applying; nil if absent
	Pages   []PageRecord
	// HasDisk says the checkpoint carries a disk section, Disk.
	HasDisk bool
	Disk    DiskLog
	// Blocks are the mirrored disk's blocks (sync kinds), of a disk of
	// DiskSize bytes.
	Blocks   []BlockRecord
	DiskSize int64
	// DiskHashes are hashes of ranges of a mirrored disk of DiskHashSize
	// bytes (committing kinds, --verify).
	DiskHashes   []DiskRangeHash
	DiskHashSize int64
}

// Decode parses and verifies buf into ck, reusing ck.Pages' storage.
// It trusts no length: every one is bounded by what remains of buf and by
// the limits of the format, and every enum, page number and section is
// checked. On error ck is unspecified. Decode does not check ordering
// against any backup state (Backup.Receive does).
func Decode(buf []byte, ck *Checkpoint) error {
	if err := decode(buf, ck); err != nil {
		return fmt.Errorf("decode checkpoint: %w", err)
	}
	return nil
}

func decode(buf []byte, ck *Checkpoint) error {
	n := min(len(buf), len(magic))
	if !bytes.Equal(buf[:n], magic[:n]) {
		return fmt.Errorf("%w: %q", ErrBadMagic, buf[:n])
	}
	if len(buf) < 10 {
		return fmt.Errorf("%w: %d bytes, header needs %d", ErrTruncated, len(buf), headerSize)
	}
	if v := binary.LittleEndian.Uint16(buf[8:]); v != FormatVersion {
		return fmt.Errorf("%w: version %d, this build reads %d", ErrVersion, v, FormatVersion)
	}
	if len(buf) < headerSize+trailerSize {
		return fmt.Errorf("%w: %d bytes, header and trailer need %d", ErrTruncated, len(buf), headerSize+trailerSize)
	}
	total := binary.LittleEndian.Uint64(buf[16:])
	switch {
	case total < headerSize+trailerSize:
		return fmt.Errorf("%w: header says %d bytes, less than header and trailer", ErrBadHeader, total)
	case uint64(len(buf)) < total:
		return fmt.Errorf("%w: have %d of %d bytes", ErrTruncated, len(buf), total)
	case uint64(len(buf)) > total:
		return fmt.Errorf("%w: %d bytes after the %d-byte checkpoint", ErrTrailingBytes, uint64(len(buf))-total, total)
	}
	body := buf[:len(buf)-trailerSize]
	if !bytes.Equal(buf[len(buf)-len(commitMarker):], commitMarker[:]) {
		return fmt.Errorf("%w: last %d bytes are %q (torn or corrupt)", ErrNoCommit, len(commitMarker), buf[len(buf)-len(commitMarker):])
	}
	want := binary.LittleEndian.Uint32(buf[len(body):])
	if got := crc32.Checksum(body, castagnoli); got != want {
		return fmt.Errorf("%w: computed crc32c %#08x, stored %#08x", ErrChecksum, got, want)
	}

	h := Header{
		Kind:       Kind(buf[10]),
		Flags:      Flags(buf[11]),
		Generation: binary.LittleEndian.Uint64(buf[24:]),
		Epoch:      binary.LittleEndian.Uint64(buf[32:]),
		MemPages:   binary.LittleEndian.Uint64(buf[40:]),
	}
	if r := binary.LittleEndian.Uint16(buf[14:]); r != 0 {
		return fmt.Errorf("%w: reserved field %#x", ErrBadHeader, r)
	}
	if err := h.validate(); err != nil {
		return err
	}
	*ck = Checkpoint{Header: h, Pages: ck.Pages[:0], Disk: DiskLog{Writes: ck.Disk.Writes[:0]}, Blocks: ck.Blocks[:0], DiskHashes: ck.DiskHashes[:0]}
	return decodeSections(body, binary.LittleEndian.Uint16(buf[12:]), ck)
}

// decodeSections parses count sections from body[headerSize:], which must
// end exactly at the trailer.
func decodeSections(body []byte, count uint16, ck *Checkpoint) error {
	var seen [numSections]bool // indexed by known SectionID
	off := headerSize
	for i := range int(count) {
		if len(body)-off < sectionSize {
			return fmt.Errorf("%w: section %d of %d header at offset %d runs past the end", ErrBadSection, i+1, count, off)
		}
		id := SectionID(binary.LittleEndian.Uint16(body[off:]))
		ver := binary.LittleEndian.Uint16(body[off+2:])
		n := uint64(binary.LittleEndian.Uint32(body[off+4:]))
		want, known := sectionVersions[id]
		switch {
		case !known:
			return &UnknownSectionError{ID: id, Offset: off}
		case ver != want:
			return fmt.Errorf("%w: %v section version %d, this build reads %d", ErrSectionVersion, id, ver, want)
		case seen[id]:
			return fmt.Errorf("%w: %v at offset %d", ErrDuplicateSection, id, off)
		case n > uint64(len(body)-off-sectionSize):
			return fmt.Errorf("%w: %v section at offset %d says %d bytes, %d remain", ErrBadSection, id, off, n, len(body)-off-sectionSize)
		}
		seen[id] = true
		payload := body[off+sectionSize : off+sectionSize+int(n)]
		if err := decodeSection(id, payload, ck); err != nil {
			return err
		}
		off += sectionSize + int(n)
	}
	if off != len(body) {
		return fmt.Errorf("%w: %d bytes after section %d of %d", ErrTrailingBytes, len(body)-off, count, count)
	}
	kind := ck.Header.Kind
	switch {
	case !seen[SectionPages]:
		return fmt.Errorf("%w: %v", ErrMissingSection, SectionPages)
	case kind.commits() && !seen[SectionMachine]:
		return fmt.Errorf("%w: %v on a %v", ErrMissingSection, SectionMachine, kind)
	case !kind.commits() && seen[SectionMachine]:
		return fmt.Errorf("%w: %v on a %v", ErrForbiddenSection, SectionMachine, kind)
	case !kind.commits() && seen[SectionMemHash]:
		return fmt.Errorf("%w: %v on a %v", ErrForbiddenSection, SectionMemHash, kind)
	case !kind.commits() && seen[SectionDisk]:
		return fmt.Errorf("%w: %v on a %v", ErrForbiddenSection, SectionDisk, kind)
	case kind == KindEpoch && seen[SectionDiskBlocks]:
		return fmt.Errorf("%w: %v on a %v", ErrForbiddenSection, SectionDiskBlocks, kind)
	case !kind.commits() && seen[SectionDiskHash]:
		return fmt.Errorf("%w: %v on a %v", ErrForbiddenSection, SectionDiskHash, kind)
	}
	return nil
}

func decodeSection(id SectionID, p []byte, ck *Checkpoint) error {
	switch id {
	case SectionMachine:
		if len(p) > MaxMachineState {
			return fmt.Errorf("%w: machine state %d bytes (limit %d)", ErrBadSection, len(p), MaxMachineState)
		}
		ck.Machine = p
	case SectionMemHash:
		if len(p) != memHashSize || HashAlg(p[0]) != HashRangeSHA256 {
			return fmt.Errorf("%w: memhash section of %d bytes, algorithm %d", ErrBadSection, len(p), firstByte(p))
		}
		ck.MemHash = p[1:]
	case SectionPages:
		return decodePages(p, ck)
	case SectionDisk:
		return decodeDiskLog(p, ck)
	case SectionDiskBlocks:
		return decodeDiskBlocks(p, ck)
	case SectionDiskHash:
		return decodeDiskHashes(p, ck)
	}
	return nil
}

func firstByte(p []byte) int {
	if len(p) == 0 {
		return -1
	}
	return int(p[0])
}

// minRecord is the smallest page record: a one-byte gap and the kind.
const minRecord = 2

func decodePages(p []byte, ck *Checkpoint) error {
	if len(p) < 4 {
		return fmt.Errorf("%w: pages section of %d bytes has no count", ErrBadSection, len(p))
	}
	count := uint64(binary.LittleEndian.Uint32(p))
	p = p[4:]
	mem := ck.Header.MemPages
	if count > mem || count > uint64(len(p)/minRecord) {
		return fmt.Errorf("%w: %d pages claimed in %d bytes for a %d-page guest", ErrBadSection, count, len(p), mem)
	}
	if uint64(cap(ck.Pages)) < count {
		ck.Pages = make([]PageRecord, 0, count)
	}
	var pfn uint64
	for i := range count {
		gap, n := binary.Uvarint(p)
		if n <= 0 {
			return fmt.Errorf("%w: record %d: bad page number", ErrBadPage, i)
		}
		p = p[n:]
		switch {
		case i > 0 && gap == 0:
			return fmt.Errorf("%w: record %d repeats page %d", ErrDuplicatePage, i, pfn)
		case gap >= mem-pfn: // pfn < mem holds: it is 0 or a checked page
			return fmt.Errorf("%w: record %d: page %d+%d, guest has %d pages", ErrPageRange, i, pfn, gap, mem)
		}
		pfn += gap
		if len(p) < 1 {
			return fmt.Errorf("%w: record %d (page %d): no encoding", ErrBadPage, i, pfn)
		}
		enc := Encoding(p[0])
		p = p[1:]
		var data []byte
		switch enc {
		case EncZero:
		case EncRaw:
			if len(p) < PageSize {
				return fmt.Errorf("%w: record %d (page %d): raw page needs %d bytes, %d remain", ErrBadPage, i, pfn, PageSize, len(p))
			}
			data, p = p[:PageSize], p[PageSize:]
		case EncLZ4, EncXORLZ4:
			l, n := binary.Uvarint(p)
			if n <= 0 || l == 0 || l > lz4Limit || l > uint64(len(p)-n) {
				return fmt.Errorf("%w: record %d (page %d): %v payload length %d (n=%d) with %d bytes left", ErrBadPage, i, pfn, enc, l, n, len(p))
			}
			data, p = p[n:n+int(l)], p[n+int(l):]
		case EncKept:
			if ck.Header.Kind == KindEpoch {
				return fmt.Errorf("%w: record %d (page %d): a kept page on an epoch checkpoint", ErrBadPage, i, pfn)
			}
		default:
			return fmt.Errorf("%w: record %d (page %d): encoding %d", ErrBadPage, i, pfn, uint8(enc))
		}
		ck.Pages = append(ck.Pages, PageRecord{PFN: pfn, Enc: enc, Data: data})
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d bytes after the last page record", ErrBadSection, len(p))
	}
	return nil
}
