package checkpoint

import (
	"encoding/binary"
	"fmt"
)

// Layout of a checkpoint (all integers little-endian):
//
//	header   magic[8] version:u16 kind:u8 flags:u8 sections:u16 reserved:u16
//	         length:u64 generation:u64 epoch:u64 memPages:u64     (48 bytes)
//	section  id:u16 version:u16 length:u32 payload[length]        (repeated)
//	trailer  crc32c:u32 over header and sections, commit[8]      (12 bytes)
//
// length is the whole checkpoint's size, trailer included, so truncation is
// named as such; the commit marker is last so that a torn write is
// recognisably incomplete; the checksum catches everything else.
const (
	// PageSize is the guest page size the format assumes.
	PageSize = 4096

	// FormatVersion is the checkpoint format this package writes and the
	// only one it reads.
	FormatVersion uint16 = 1

	headerSize  = 48
	sectionSize = 8
	trailerSize = 12

	// MaxMachineState bounds the machine-state section a decoder accepts.
	MaxMachineState = 64 << 20
	// MaxMemPages bounds the guest memory size a header may name (1 TiB).
	MaxMemPages = 1 << 28
)

var (
	magic        = [8]byte{'F', 'T', 'C', 'K', 'P', 'T', 0, 'C'}
	commitMarker = [8]byte{'C', 'O', 'M', 'M', 'I', 'T', 0, 0}
)

// Kind says what state a checkpoint describes; see the package comment.
// The zero Kind is invalid.
type Kind uint8

// Checkpoint kinds.
const (
	KindEpoch      Kind = 1
	KindSyncRound  Kind = 2
	KindSyncCommit Kind = 3
)

func (k Kind) String() string {
	switch k {
	case KindEpoch:
		return "epoch"
	case KindSyncRound:
		return "sync-round"
	case KindSyncCommit:
		return "sync-commit"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

func (k Kind) valid() bool { return k >= KindEpoch && k <= KindSyncCommit }

// PeekHeader is the header buf claims, verified no further (ok is false
// unless buf starts with the magic and a header of a known kind). For
// routing and naming only: Decode and Backup.Receive verify.
func PeekHeader(buf []byte) (h Header, ok bool) {
	if len(buf) < headerSize || [8]byte(buf[:8]) != magic || !Kind(buf[10]).valid() {
		return Header{}, false
	}
	return Header{
		Kind: Kind(buf[10]), Flags: Flags(buf[11]),
		Generation: binary.LittleEndian.Uint64(buf[24:]), Epoch: binary.LittleEndian.Uint64(buf[32:]),
		MemPages: binary.LittleEndian.Uint64(buf[40:]),
	}, true
}

// commits reports whether a checkpoint of this kind commits a state.
func (k Kind) commits() bool { return k == KindEpoch || k == KindSyncCommit }

// Flags is a bit set in the header. Bits not defined here must be zero.
type Flags uint8

// Header flags.
const (
	// FlagSyncStart marks the first message of a full sync: the backup
	// forgets which pages it has and, for a round, its committed state.
	// Only valid on KindSyncRound and KindSyncCommit.
	FlagSyncStart Flags = 1 << 0
	// FlagSendHashes, on a sync round that starts a sync, asks the backup
	// for the range hashes of what it holds (MemoryHashes, and with a
	// mirrored disk ImageHashes, as the primary's Hello asked for them),
	// named by this sync's generation and epoch, so that the sync's first
	// pass leaves out what the backup has (KEPT). A connection's first
	// sync uses those the Hello asked for instead; later ones ask here.
	FlagSendHashes Flags = 1 << 1
	// FlagHeld says the operator held the guest paused (ftckpt ctl
	// pause) when the state this checkpoint commits was taken: a backup
	// that goes live from it keeps the guest paused. Only valid on the
	// kinds that commit (KindEpoch, KindSyncCommit).
	FlagHeld Flags = 1 << 2

	knownFlags = FlagSyncStart | FlagSendHashes | FlagHeld
)

// Header is the fixed start of every checkpoint.
type Header struct {
	Kind       Kind
	Flags      Flags
	Generation uint64 // the primary's generation, won at the witness
	Epoch      uint64 // the epoch this checkpoint commits, or is building
	MemPages   uint64 // guest memory size in pages; must match the backup
}

// validate checks the header's own consistency (not its ordering against
// the backup's state).
func (h Header) validate() error {
	if !h.Kind.valid() {
		return fmt.Errorf("%w: %d", ErrBadKind, uint8(h.Kind))
	}
	if h.Flags&^knownFlags != 0 {
		return fmt.Errorf("%w: %#x", ErrBadFlags, uint8(h.Flags&^knownFlags))
	}
	if h.Kind == KindEpoch && h.Flags&FlagSyncStart != 0 {
		return fmt.Errorf("%w: sync-start on an epoch checkpoint", ErrBadFlags)
	}
	if h.Flags&FlagSendHashes != 0 && (h.Kind != KindSyncRound || h.Flags&FlagSyncStart == 0) {
		return fmt.Errorf("%w: send-hashes on a %v that does not start a sync", ErrBadFlags, h.Kind)
	}
	if h.Flags&FlagHeld != 0 && !h.Kind.commits() {
		return fmt.Errorf("%w: held on a %v, which commits nothing", ErrBadFlags, h.Kind)
	}
	if h.MemPages == 0 || h.MemPages > MaxMemPages {
		return fmt.Errorf("%w: %d pages (limit %d)", ErrBadMemSize, h.MemPages, MaxMemPages)
	}
	if h.Generation == 0 {
		return fmt.Errorf("%w: generation 0", ErrBadHeader)
	}
	return nil
}

func (h Header) String() string {
	return fmt.Sprintf("%v gen=%d epoch=%d flags=%#x pages=%d", h.Kind, h.Generation, h.Epoch, uint8(h.Flags), h.MemPages)
}

func putHeader(b []byte, h Header, sections uint16, length uint64) {
	copy(b[0:8], magic[:])
	binary.LittleEndian.PutUint16(b[8:], FormatVersion)
	b[10] = byte(h.Kind)
	b[11] = byte(h.Flags)
	binary.LittleEndian.PutUint16(b[12:], sections)
	binary.LittleEndian.PutUint16(b[14:], 0)
	binary.LittleEndian.PutUint64(b[16:], length)
	binary.LittleEndian.PutUint64(b[24:], h.Generation)
	binary.LittleEndian.PutUint64(b[32:], h.Epoch)
	binary.LittleEndian.PutUint64(b[40:], h.MemPages)
}

// SectionID names a section. The zero SectionID is invalid.
type SectionID uint16

// Sections. Each appears at most once.
const (
	// SectionMachine is the opaque machine-state blob (vCPUs, devices).
	// Required on committing kinds, forbidden on sync rounds.
	SectionMachine SectionID = 1
	// SectionPages is the list of pages; required on every kind.
	SectionPages SectionID = 2
	// SectionMemHash is a hash of all guest memory after applying; optional,
	// only on committing kinds (used by --verify).
	SectionMemHash SectionID = 3
	// SectionDisk is the DiskLog: disk writes the backup keeps until it
	// learns they are durable. Optional, only on committing kinds.
	SectionDisk SectionID = 4
	// SectionDiskBlocks is blocks of a mirrored disk's image (see
	// DiskBlockSize). Optional, only on sync kinds.
	SectionDiskBlocks SectionID = 5
	// SectionDiskHash is hashes of ranges of a mirrored disk as the
	// committed guest sees it (DiskRangeHash). Optional, only on committing
	// kinds (--verify).
	SectionDiskHash SectionID = 6

	numSections = 7
)

// sectionVersions is the version of each section this package reads and writes.
var sectionVersions = map[SectionID]uint16{
	SectionMachine:    1,
	SectionPages:      1,
	SectionMemHash:    1,
	SectionDisk:       1,
	SectionDiskBlocks: 1,
	SectionDiskHash:   1,
}

func (s SectionID) String() string {
	switch s {
	case SectionMachine:
		return "machine"
	case SectionPages:
		return "pages"
	case SectionMemHash:
		return "memhash"
	case SectionDisk:
		return "disk"
	case SectionDiskBlocks:
		return "diskblocks"
	case SectionDiskHash:
		return "diskhash"
	}
	return fmt.Sprintf("section(%d)", uint16(s))
}

// Encoding is how one page is carried. The zero Encoding is invalid.
//
// Pages section payload: count:u32, then count records, in strictly
// increasing page-frame order:
//
//	gap:uvarint  (pfn minus the previous pfn; the first record's pfn itself)
//	enc:u8
//	ZERO:   nothing
//	RAW:    PageSize bytes
//	LZ4, XORLZ4: n:uvarint (1 <= n < PageSize) then n bytes of lz4 block
//	KEPT:   nothing (sync kinds only)
type Encoding uint8

// Page encodings.
const (
	EncZero   Encoding = 1 // the page is all zero
	EncRaw    Encoding = 2 // the page verbatim
	EncLZ4    Encoding = 3 // lz4 block of the page
	EncXORLZ4 Encoding = 4 // lz4 block of page XOR the backup's copy of it
	// EncKept, in a sync only: the backup holds the page already
	// (MemoryHashes), or its image the disk block (ImageHashes), as the
	// primary has it; it counts toward the sync, nothing is written.
	EncKept Encoding = 5

	numEncodings = 6
)

func (e Encoding) String() string {
	switch e {
	case EncZero:
		return "zero"
	case EncRaw:
		return "raw"
	case EncLZ4:
		return "lz4"
	case EncXORLZ4:
		return "xorlz4"
	case EncKept:
		return "kept"
	}
	return fmt.Sprintf("encoding(%d)", uint8(e))
}

// HashAlg names the memory-hash algorithm. The zero HashAlg is invalid.
type HashAlg uint8

// Hash algorithms. HashSHA256 is SHA-256 of the bytes hashed (a range of
// a disk or of memory: ImageHashes, MemoryHashes, the diskhash section);
// HashRangeSHA256, the memhash section's, is the SHA-256 of each memory
// range's (HashMemory).
const (
	HashSHA256      HashAlg = 1
	HashRangeSHA256 HashAlg = 2
)

// memHashSize is the SectionMemHash payload size: alg:u8 then the digest.
const memHashSize = 1 + 32
