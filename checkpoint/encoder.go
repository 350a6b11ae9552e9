package checkpoint

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"

	"github.com/pierrec/lz4/v4"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// zeroPage is compared against to find all-zero pages.
var zeroPage [PageSize]byte

// lz4Limit is the largest lz4 payload worth sending: one more byte and the
// record (kind, uvarint length, payload) is no smaller than a RAW record.
const lz4Limit = PageSize - 3

// Stats counts what an Encoder produced since it was made or ResetStats.
type Stats struct {
	Pages     [numEncodings]uint64 // pages sent, indexed by Encoding
	Unchanged uint64               // dirty pages equal to the backup's copy, not sent
	PageBytes uint64               // bytes of page records, framing excluded
}

// Encoder builds checkpoints on the primary, choosing for each page the
// smallest of ZERO, RAW, LZ4 and (when the backup's copy is known) XORLZ4
// (with one bounded shortcut, see deltaGoodEnough), and keeping its
// PageCache in step.
//
// Use: Begin, AddPage for each dirty page in increasing pfn order,
// optionally SetDiskLog, then Finish (or Abort). One goroutine at a time; it may run while the guest
// runs, because it reads only the page slices handed to AddPage (copies
// taken while the guest was paused) and its own cache. After the first
// few checkpoints have grown the output buffer, encoding allocates nothing.
type Encoder struct {
	cache *PageCache
	comp  lz4.Compressor
	xor   [PageSize]byte
	lz    [PageSize]byte
	lzx   [PageSize]byte

	// syncing is set between a FlagSyncStart message and the sync commit;
	// syncGeneration/syncEpoch name the sync in progress.
	syncing                   bool
	syncGeneration, syncEpoch uint64

	active   bool // between Begin and Finish/Abort
	h        Header
	disk     *DiskLog // set by SetDiskLog for this checkpoint
	buf      []byte
	count    uint32 // pages in the pages section so far
	lastPFN  uint64
	anyPages bool
	stats    Stats
	blocks   blockEncoder // a mirrored disk's blocks (SetDiskSize)
	// diskHashes, if set, are for the checkpoint begun (SetDiskHashes), of
	// a disk of diskHashSize bytes.
	diskHashes   []DiskRangeHash
	diskHashSize int64
}

// NewEncoder returns an Encoder that owns cache; nothing else may use the
// cache afterwards.
func NewEncoder(cache *PageCache) *Encoder {
	return &Encoder{cache: cache}
}

// Cache returns the encoder's page cache (for Base and Invalidate).
func (e *Encoder) Cache() *PageCache { return e.cache }

// Stats returns the counts so far.
func (e *Encoder) Stats() Stats { return e.stats }

// ResetStats zeroes the counts.
func (e *Encoder) ResetStats() { e.stats = Stats{} }

// Begin starts a checkpoint described by h, whose output is appended to
// dst[:0]; pass the previous output back to reuse its memory once it has
// been sent. h.MemPages is taken from the cache.
//
// An epoch must follow the cache's Base by exactly one within the same
// generation; FlagSyncStart invalidates the cache (the backup's contents
// are about to be replaced); a sync round or commit without FlagSyncStart
// must continue the sync in progress.
func (e *Encoder) Begin(dst []byte, h Header) error {
	if e.active {
		return fmt.Errorf("begin %v: %w: previous checkpoint not finished", h, ErrEncoderState)
	}
	h.MemPages = e.cache.pages
	if err := h.validate(); err != nil {
		return fmt.Errorf("begin checkpoint: %w", err)
	}
	switch {
	case h.Kind == KindEpoch:
		g, ep, ok := e.cache.Base()
		if !ok || g != h.Generation || ep+1 != h.Epoch || e.syncing {
			return fmt.Errorf("begin %v: %w: cache base is gen=%d epoch=%d valid=%v (sync in progress %v)",
				h, ErrEncoderState, g, ep, ok, e.syncing)
		}
	case h.Flags&FlagSyncStart != 0:
		e.cache.Invalidate()
		e.syncing, e.syncGeneration, e.syncEpoch = true, h.Generation, h.Epoch
	default:
		if !e.syncing || e.syncGeneration != h.Generation || e.syncEpoch != h.Epoch {
			return fmt.Errorf("begin %v: %w: no sync in progress for it", h, ErrEncoderState)
		}
	}
	e.active, e.h, e.disk, e.diskHashes = true, h, nil, nil
	e.count, e.lastPFN, e.anyPages = 0, 0, false
	e.blocks.begin(h.Flags&FlagSyncStart != 0)
	e.buf = append(dst[:0], make([]byte, headerSize+sectionSize+4)...)
	return nil
}

// AddPage adds page pfn, whose current contents are page (PageSize bytes).
// Pages must come in strictly increasing pfn order. A page equal to the
// backup's copy is not sent. An error leaves the checkpoint as it was.
func (e *Encoder) AddPage(pfn uint64, page []byte) error {
	if err := e.checkPage(pfn, page); err != nil {
		return err
	}
	var cached []byte
	if e.cache.Valid(pfn) {
		cached = e.cache.page(pfn)
		if bytes.Equal(page, cached) {
			e.stats.Unchanged++
			return nil
		}
	}
	enc, payload := e.choose(page, cached)
	if enc == EncRaw {
		payload = page
	}
	e.appendRecord(pfn, enc, payload)
	e.cache.store(pfn, page, enc == EncZero)
	return nil
}

// checkPage says why page pfn, of contents page, may not be added next, if
// it may not.
func (e *Encoder) checkPage(pfn uint64, page []byte) error {
	switch {
	case !e.active:
		return fmt.Errorf("add page %d: %w: no checkpoint begun", pfn, ErrEncoderState)
	case len(page) != PageSize:
		return fmt.Errorf("add page %d: %w: %d bytes, want %d", pfn, ErrBadPage, len(page), PageSize)
	case pfn >= e.cache.pages:
		return fmt.Errorf("add page %d: %w: guest has %d pages", pfn, ErrPageRange, e.cache.pages)
	case e.anyPages && pfn <= e.lastPFN:
		return fmt.Errorf("add page %d: %w: after page %d", pfn, ErrDuplicatePage, e.lastPFN)
	case e.count == math.MaxUint32:
		return fmt.Errorf("add page %d: %w: page count", pfn, ErrTooLarge)
	}
	return nil
}

// appendRecord appends page pfn's record: its gap, enc, and payload as enc
// carries it (RAW the page, LZ4 and XORLZ4 a length and the block, ZERO
// and KEPT nothing).
func (e *Encoder) appendRecord(pfn uint64, enc Encoding, payload []byte) {
	gap := pfn
	if e.anyPages {
		gap = pfn - e.lastPFN
	}
	start := len(e.buf)
	e.buf = binary.AppendUvarint(e.buf, gap)
	e.buf = append(e.buf, byte(enc))
	switch enc {
	case EncRaw:
		e.buf = append(e.buf, payload...)
	case EncLZ4, EncXORLZ4:
		e.buf = binary.AppendUvarint(e.buf, uint64(len(payload)))
		e.buf = append(e.buf, payload...)
	}
	e.stats.Pages[enc]++
	e.stats.PageBytes += uint64(len(e.buf) - start)
	e.count++
	e.lastPFN, e.anyPages = pfn, true
}

// AddKeptPage adds page pfn to the sync checkpoint begun as one the backup
// holds already (KEPT), with page its contents (PageSize bytes), which the
// cache takes as the backup's: it counts as sent, and the backup writes
// nothing. The caller knows it from the backup's memory hashes
// (MemoryHashes), and must pass the very contents it compared. Order and
// errors as AddPage; an epoch cannot keep a page.
func (e *Encoder) AddKeptPage(pfn uint64, page []byte) error {
	if e.active && e.h.Kind == KindEpoch {
		return fmt.Errorf("add kept page %d: %w: a kept page on an epoch checkpoint", pfn, ErrBadPage)
	}
	if err := e.checkPage(pfn, page); err != nil {
		return err
	}
	e.appendRecord(pfn, EncKept, nil)
	// A zero page leaves the cache's bytes alone (as AddPage's): most of a
	// kept memory is zero, and the copy would fault in all of the cache.
	e.cache.store(pfn, page, bytes.Equal(page, zeroPage[:]))
	return nil
}

// SetDiskLog makes the checkpoint begun carry d as its disk section (see
// DiskLog for what it means on each kind). d's slices are read by Finish and
// not retained after it. d is checked by Finish: a log that breaks the
// section's rules, or any log on a sync round, fails it.
func (e *Encoder) SetDiskLog(d DiskLog) error {
	if !e.active {
		return fmt.Errorf("set disk log: %w: no checkpoint begun", ErrEncoderState)
	}
	e.disk = &d
	return nil
}

// deltaGoodEnough is the XOR+lz4 payload size at or below which the
// encoder does not also try plain lz4. Compressing the page itself costs a
// full lz4 pass that, on memtouch-like pages (a few bytes changed in
// otherwise incompressible data), halves throughput and never wins; the
// price is that, when the delta is this small, a plain lz4 encoding that
// would have been smaller still is not found: at most deltaGoodEnough
// bytes are lost on such a page. Everywhere else the smallest is picked.
const deltaGoodEnough = PageSize / 16

// choose picks the smallest encoding of page (see deltaGoodEnough for the
// one shortcut); cached is the backup's copy or nil. The payload aliases
// the encoder's scratch buffers.
func (e *Encoder) choose(page, cached []byte) (Encoding, []byte) {
	if bytes.Equal(page, zeroPage[:]) {
		return EncZero, nil
	}
	enc, payload := EncRaw, []byte(nil)
	best := lz4Limit + 1 // payload size to beat
	if cached != nil {
		subtle.XORBytes(e.xor[:], page, cached)
		if n, err := e.comp.CompressBlock(e.xor[:], e.lzx[:best-1]); err == nil && n > 0 {
			enc, payload, best = EncXORLZ4, e.lzx[:n], n
		}
	}
	if best > deltaGoodEnough {
		if n, err := e.comp.CompressBlock(page, e.lz[:best-1]); err == nil && n > 0 {
			enc, payload = EncLZ4, e.lz[:n]
		}
	}
	return enc, payload
}

// Finish completes the checkpoint and returns it. machine is the opaque
// machine state: required for committing kinds, must be nil for a sync
// round. The disk log given to SetDiskLog, if any, is checked and
// carried. withHash adds a SHA-256 of all guest memory as the backup will
// hold it (for --verify); it costs a pass over the cache.
//
// On success a committing checkpoint moves the cache's Base to its
// (generation, epoch). On error the checkpoint is abandoned and the cache
// invalidated: the next checkpoint must be a full sync.
func (e *Encoder) Finish(machine []byte, withHash bool) ([]byte, error) {
	if !e.active {
		return nil, fmt.Errorf("finish: %w: no checkpoint begun", ErrEncoderState)
	}
	out, err := e.finish(machine, withHash)
	if err != nil {
		e.Abort()
		return nil, fmt.Errorf("finish %v: %w", e.h, err)
	}
	e.active = false
	if e.h.Kind.commits() {
		e.syncing = false
		e.cache.setBase(e.h.Generation, e.h.Epoch)
	}
	return out, nil
}

func (e *Encoder) finish(machine []byte, withHash bool) ([]byte, error) {
	commits := e.h.Kind.commits()
	switch {
	case commits && machine == nil:
		return nil, fmt.Errorf("%w: %v needs machine state", ErrMissingSection, e.h.Kind)
	case !commits && machine != nil:
		return nil, fmt.Errorf("%w: machine state on a %v", ErrForbiddenSection, e.h.Kind)
	case !commits && withHash:
		return nil, fmt.Errorf("%w: memory hash on a %v", ErrForbiddenSection, e.h.Kind)
	case len(machine) > MaxMachineState:
		return nil, fmt.Errorf("%w: machine state %d bytes (limit %d)", ErrTooLarge, len(machine), MaxMachineState)
	case e.h.Kind == KindSyncCommit && !e.cache.AllValid():
		return nil, fmt.Errorf("%w: some pages were never sent during this sync", ErrIncompleteSync)
	case e.h.Kind == KindSyncCommit && !e.blocks.allSent():
		return nil, fmt.Errorf("%w: some disk blocks were never sent during this sync", ErrIncompleteSync)
	case !commits && e.disk != nil:
		return nil, fmt.Errorf("%w: disk log on a %v", ErrForbiddenSection, e.h.Kind)
	case !commits && e.diskHashes != nil:
		return nil, fmt.Errorf("%w: disk hashes on a %v", ErrForbiddenSection, e.h.Kind)
	}
	if e.diskHashes != nil {
		if err := checkDiskHashes(e.diskHashSize, e.diskHashes); err != nil {
			return nil, err
		}
	}
	if e.disk != nil {
		if err := e.disk.check(e.h); err != nil {
			return nil, err
		}
	}
	pagesLen := len(e.buf) - headerSize - sectionSize
	if pagesLen > math.MaxUint32 {
		return nil, fmt.Errorf("%w: pages section %d bytes", ErrTooLarge, pagesLen)
	}
	putSection(e.buf[headerSize:], SectionPages, uint32(pagesLen))
	binary.LittleEndian.PutUint32(e.buf[headerSize+sectionSize:], e.count)
	sections := uint16(1)
	if machine != nil {
		e.buf = appendSection(e.buf, SectionMachine, machine)
		sections++
	}
	if e.disk != nil {
		var sh [sectionSize]byte
		putSection(sh[:], SectionDisk, uint32(e.disk.size()))
		e.buf = appendDiskLog(append(e.buf, sh[:]...), *e.disk)
		e.disk = nil
		sections++
	}
	var withBlocks bool
	if e.buf, withBlocks = e.blocks.appendSection(e.buf); withBlocks {
		sections++
	}
	if e.diskHashes != nil {
		e.buf = appendDiskHashes(e.buf, e.diskHashSize, e.diskHashes)
		e.diskHashes = nil
		sections++
	}
	if withHash {
		if !e.cache.AllValid() {
			return nil, fmt.Errorf("%w: memory hash needs every page known", ErrIncompleteSync)
		}
		sum := e.cache.Hash()
		var p [memHashSize]byte
		p[0] = byte(HashRangeSHA256)
		copy(p[1:], sum[:])
		e.buf = appendSection(e.buf, SectionMemHash, p[:])
		sections++
	}
	putHeader(e.buf, e.h, sections, uint64(len(e.buf)+trailerSize))
	e.buf = binary.LittleEndian.AppendUint32(e.buf, crc32.Checksum(e.buf, castagnoli))
	e.buf = append(e.buf, commitMarker[:]...)
	return e.buf, nil
}

// Abort abandons the checkpoint in progress, if any. The cache may already
// hold some of its pages, so it is invalidated: the next checkpoint must
// be a full sync.
func (e *Encoder) Abort() {
	e.active, e.syncing, e.disk, e.diskHashes = false, false, nil, nil
	e.cache.Invalidate()
}

func putSection(b []byte, id SectionID, n uint32) {
	binary.LittleEndian.PutUint16(b[0:], uint16(id))
	binary.LittleEndian.PutUint16(b[2:], sectionVersions[id])
	binary.LittleEndian.PutUint32(b[4:], n)
}

func appendSection(b []byte, id SectionID, payload []byte) []byte {
	var h [sectionSize]byte
	putSection(h[:], id, uint32(len(payload)))
	return append(append(b, h[:]...), payload...)
}
