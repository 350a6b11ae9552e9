package checkpoint

import (
	"bytes"
	"crypto/subtle"
	"fmt"

	"github.com/pierrec/lz4/v4"
)

// BackupState is where a Backup stands. The zero BackupState is invalid.
type BackupState uint8

// Backup states.
const (
	// StateEmpty: nothing received yet; memory is not a guest state.
	StateEmpty BackupState = 1
	// StateCommitted: memory and machine state are exactly the last
	// committed (generation, epoch); the backup can take over.
	StateCommitted BackupState = 2
	// StateSyncing: a full sync is in progress; memory is a mixture of
	// pre-copy rounds and there is no committed state to take over from.
	StateSyncing BackupState = 3
)

func (s BackupState) String() string {
	switch s {
	case StateEmpty:
		return "empty"
	case StateCommitted:
		return "committed"
	case StateSyncing:
		return "syncing"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Status is a Backup's position.
type Status struct {
	State BackupState
	// Generation and Epoch are the committed state (StateCommitted) or the
	// target of the sync in progress (StateSyncing); zero when empty.
	Generation, Epoch uint64
	// Held: the committed state's checkpoint carried FlagHeld (the
	// operator held the guest paused).
	Held bool
}

// Result says what Receive did with an accepted checkpoint.
type Result struct {
	Header Header
	// Committed is true when the checkpoint committed Header's
	// (Generation, Epoch): the caller acknowledges it to the primary.
	// A sync round is applied but not committed.
	Committed bool
	// Blocks and Writes are, for a backup with a mirrored disk
	// (MirrorDisk), what the checkpoint changes on its image: the blocks
	// a sync message carried, then the disk writes a committing one
	// carried, to be written in that order before the checkpoint is
	// acknowledged (a sync commit's writes are already in its blocks;
	// writing them again changes nothing). They alias the Backup's staging
	// and the buffer given to Receive: valid until the next Receive and
	// while that buffer is unchanged; do not modify them.
	Blocks []DiskBlock
	Writes []DiskWrite
	// DiskHashes are the hashes of ranges of the disk the primary's
	// committed guest sees (--verify), to compare with the backup's image
	// once Blocks and Writes are on it. Valid until the next Receive.
	DiskHashes []DiskRangeHash
}

// BackupConfig configures a Backup.
type BackupConfig struct {
	// CheckMachine, if set, is called with each committing checkpoint's
	// machine-state blob while it is staged, before guest memory is
	// touched; an error rejects the checkpoint. It runs on the goroutine
	// calling Receive and must not retain blob.
	CheckMachine func(h Header, blob []byte) error
	// SharedMemory says others write the memory between calls to Receive
	// (a replay backup's guest replays in it): a memory hash then hashes
	// all of it, not only the ranges the Backup wrote since the last.
	SharedMemory bool
}

// Backup holds the backup's copy of the guest: its memory and the machine
// state of the last committed checkpoint. It stages each incoming
// checkpoint completely (decode, decompress, XOR, checks) before writing
// any byte of memory, so a rejected checkpoint leaves memory, machine
// state and Status exactly as they were (DESIGN.md invariant 2).
//
// A Backup is used by one goroutine (the receiver). Memory and Machine
// are stable only between calls to Receive.
type Backup struct {
	mem   []byte
	pages uint64
	cfg   BackupConfig

	status Status
	// maxGeneration is the highest generation ever accepted; anything
	// lower is a stale primary and is refused (fencing).
	maxGeneration uint64
	machine       []byte   // last committed machine state (own copy)
	spare         []byte   // the other machine-state buffer, swapped on commit
	covered       []uint64 // StateSyncing: pages written since the sync started
	// disk is the disk writes of committed epochs not known to be durable,
	// in emission order (own copies); see DiskLog.
	disk []DiskWrite
	// blocks is the mirrored disk's part (MirrorDisk).
	blocks blockBackup

	// sums are the range sums of mem, for memory hashes; after holds, once
	// hashAfter checked a checkpoint, the sums of the ranges it writes, for
	// apply to keep, and scratch a range, to take them.
	sums    memorySums
	after   []rangeSumAt
	scratch []byte

	// Staging, reused by every Receive.
	ck    Checkpoint
	stage []byte   // decompressed pages, PageSize each
	src   [][]byte // per record of ck.Pages: the page's final contents
}

// NewBackup returns an empty Backup over mem, the backup's guest memory
// (guest-physical [0, len(mem)); len(mem) a positive multiple of
// PageSize). The Backup owns mem from now on.
func NewBackup(mem []byte, cfg BackupConfig) (*Backup, error) {
	if len(mem) == 0 || len(mem)%PageSize != 0 || uint64(len(mem)/PageSize) > MaxMemPages {
		return nil, fmt.Errorf("new backup: %w: %d bytes is not a positive multiple of %d up to %d pages",
			ErrBadMemSize, len(mem), PageSize, MaxMemPages)
	}
	n := uint64(len(mem) / PageSize)
	return &Backup{
		mem:     mem,
		pages:   n,
		cfg:     cfg,
		status:  Status{State: StateEmpty},
		covered: make([]uint64, (n+63)/64),
		sums:    newMemorySums(n),
	}, nil
}

// Status returns the backup's position.
func (b *Backup) Status() Status { return b.status }

// Memory returns guest memory. It is the committed state when Status is
// StateCommitted.
func (b *Backup) Memory() []byte { return b.mem }

// Machine returns the machine-state blob of the last committed checkpoint
// (nil unless StateCommitted). Valid until the next Receive.
func (b *Backup) Machine() []byte {
	if b.status.State != StateCommitted {
		return nil
	}
	return b.machine
}

// DiskWrites returns the disk writes of committed epochs that the primary
// has not said are durable, in the order the guest issued them (nil unless
// StateCommitted). The guest of the committed state has seen each complete,
// but the disk may lack any of them: a backup going live writes them all
// again, in order, before the guest runs (writes are idempotent, and none
// of a later epoch can be on the disk, since its outputs were never
// released). The slice and its data are the Backup's, valid until the next
// Receive; do not modify them.
func (b *Backup) DiskWrites() []DiskWrite {
	if b.status.State != StateCommitted {
		return nil
	}
	return b.disk
}

// Discard drops the backup's committed state or sync in progress (it
// becomes StateEmpty; the highest generation accepted stays): what it
// holds outside memory no longer matches it (a mirrored disk's image that
// failed a write or a check). Only a full sync makes it committed again.
func (b *Backup) Discard() {
	b.status = Status{State: StateEmpty}
	clear(b.disk)
	b.disk = b.disk[:0]
}

// Receive verifies one whole checkpoint and, only if every check passes,
// applies it. buf is not retained. On error nothing has changed.
func (b *Backup) Receive(buf []byte) (Result, error) {
	defer b.release()
	if err := Decode(buf, &b.ck); err != nil {
		return Result{}, fmt.Errorf("receive: %w", err)
	}
	h := b.ck.Header
	if err := b.stageAll(); err != nil {
		return Result{}, fmt.Errorf("receive %v: %w", h, err)
	}
	b.apply()
	res := Result{Header: h, Committed: h.Kind.commits()}
	if b.blocks.size > 0 {
		res.Blocks = b.blocks.staged
		b.blocks.writes = append(b.blocks.writes[:0], b.ck.Disk.Writes...) // release clears ck's
		res.Writes = b.blocks.writes
		if len(b.ck.DiskHashes) > 0 {
			res.DiskHashes = b.ck.DiskHashes
		}
	}
	return res, nil
}

// stageAll runs every check and fills b.src; it writes nothing but staging.
func (b *Backup) stageAll() error {
	ck := &b.ck
	h := ck.Header
	if h.MemPages != b.pages {
		return fmt.Errorf("%w: checkpoint has %d pages, backup %d", ErrMemSizeMismatch, h.MemPages, b.pages)
	}
	if err := b.checkOrder(h); err != nil {
		return err
	}
	start := h.Flags&FlagSyncStart != 0
	sync := h.Kind != KindEpoch

	// Decompress and resolve every page.
	nlz := 0
	for _, r := range ck.Pages {
		if r.Enc == EncLZ4 || r.Enc == EncXORLZ4 {
			nlz++
		}
	}
	if need := nlz * PageSize; cap(b.stage) < need {
		b.stage = make([]byte, need)
	}
	b.src = b.src[:0]
	slot := 0
	for i, r := range ck.Pages {
		var page []byte
		switch r.Enc {
		case EncZero:
			page = zeroPage[:]
		case EncRaw:
			page = r.Data
		case EncKept:
			page = b.page(r.PFN) // decode refused it on an epoch
		case EncLZ4, EncXORLZ4:
			if r.Enc == EncXORLZ4 && sync && (start || !b.isCovered(r.PFN)) {
				return fmt.Errorf("%w: record %d (page %d) is a delta but the backup's copy is not from this sync", ErrNoBase, i, r.PFN)
			}
			page = b.stage[slot : slot+PageSize : slot+PageSize]
			slot += PageSize
			n, err := lz4.UncompressBlock(r.Data, page)
			if err != nil || n != PageSize {
				return fmt.Errorf("%w: record %d (page %d): %v payload decodes to %d bytes (%v)", ErrBadPage, i, r.PFN, r.Enc, n, err)
			}
			if r.Enc == EncXORLZ4 {
				subtle.XORBytes(page, page, b.page(r.PFN))
			}
		}
		b.src = append(b.src, page)
	}

	if err := b.stageBlocks(start, h.Kind == KindSyncCommit); err != nil {
		return err
	}
	if h.Kind == KindSyncCommit {
		have := uint64(0)
		if !start {
			have = ones(b.covered)
		}
		for _, r := range ck.Pages {
			if start || !b.isCovered(r.PFN) {
				have++
			}
		}
		if have != b.pages {
			return fmt.Errorf("%w: %d of %d pages", ErrIncompleteSync, have, b.pages)
		}
	}
	if ck.MemHash != nil {
		if sum := b.hashAfter(); !bytes.Equal(sum[:], ck.MemHash) {
			return fmt.Errorf("%w: memory would hash to %x, primary says %x", ErrMemHash, sum, ck.MemHash)
		}
	}
	if h.Kind.commits() && b.cfg.CheckMachine != nil {
		if err := b.cfg.CheckMachine(h, ck.Machine); err != nil {
			return fmt.Errorf("%w: %w", ErrMachineState, err)
		}
	}
	return nil
}

// checkOrder decides whether h may follow the backup's current position.
func (b *Backup) checkOrder(h Header) error {
	st := b.status
	fail := func(reason string) error {
		return &OrderError{
			Reason:         reason,
			HaveGeneration: st.Generation, HaveEpoch: st.Epoch,
			HaveValid: st.State != StateEmpty,
			Got:       h,
			stale:     h.Generation < b.maxGeneration,
		}
	}
	if h.Generation < b.maxGeneration {
		return fail(fmt.Sprintf("generation %d is older than %d", h.Generation, b.maxGeneration))
	}
	switch {
	case h.Kind == KindEpoch:
		switch {
		case st.State != StateCommitted:
			return fail(fmt.Sprintf("epoch checkpoint while %v: needs a full sync first", st.State))
		case h.Generation != st.Generation:
			return fail("a new generation must begin with a full sync")
		case h.Epoch != st.Epoch+1:
			return fail(fmt.Sprintf("expected epoch %d", st.Epoch+1))
		}
	case h.Flags&FlagSyncStart != 0:
		if st.State == StateCommitted && h.Generation == st.Generation && h.Epoch <= st.Epoch {
			return fail(fmt.Sprintf("a sync must target an epoch after %d", st.Epoch))
		}
	default: // continuing a sync
		switch {
		case st.State != StateSyncing:
			return fmt.Errorf("%w: %v while %v", ErrNotSyncing, h, st.State)
		case h.Generation != st.Generation || h.Epoch != st.Epoch:
			return fail("does not continue the sync in progress")
		}
	}
	return nil
}

// hashAfter is the memory hash (HashMemory) memory would have after
// applying b.src: the sums kept of the ranges it leaves alone (taken again
// where stale, and scrubRanges more in turn), and of each range it writes,
// that range as it would be, which it keeps in b.after for apply.
func (b *Backup) hashAfter() [32]byte {
	if b.cfg.SharedMemory {
		b.sums.staleAll()
	}
	// A change the Backup did not make (a stray write, a bad bit) shows
	// within ranges/scrubRanges checkpoints, as the disk's hashes check
	// a range nobody writes in turn.
	b.sums.staleNext(scrubRanges)
	b.after = b.after[:0]
	if b.scratch == nil {
		b.scratch = make([]byte, MemHashRangePages*PageSize)
	}
	for i := 0; i < len(b.ck.Pages); {
		r := b.ck.Pages[i].PFN / MemHashRangePages
		first := r * MemHashRangePages
		n := min(MemHashRangePages, b.pages-first)
		rng := b.scratch[:n*PageSize]
		copy(rng, b.mem[first*PageSize:])
		for ; i < len(b.ck.Pages) && b.ck.Pages[i].PFN/MemHashRangePages == r; i++ {
			copy(rng[(b.ck.Pages[i].PFN-first)*PageSize:], b.src[i])
		}
		b.after = append(b.after, rangeSumAt{r, rangeSum(rng)})
	}
	b.sums.refresh(b.mem, b.after...)
	return b.sums.digest(b.after...)
}

// scrubRanges is how many ranges nothing wrote each memory hash takes
// again (4 MiB).
const scrubRanges = 16

// apply writes the staged checkpoint; it cannot fail.
func (b *Backup) apply() {
	h := b.ck.Header
	if h.Flags&FlagSyncStart != 0 {
		clear(b.covered)
		b.status = Status{State: StateSyncing, Generation: h.Generation, Epoch: h.Epoch}
	}
	for i, r := range b.ck.Pages {
		if r.Enc != EncKept {
			copy(b.page(r.PFN), b.src[i])
			b.sums.touch(r.PFN)
		}
	}
	for _, a := range b.after { // the ranges hashAfter took as written
		b.sums.set(a.r, a.sum)
	}
	if h.Kind != KindEpoch {
		for _, r := range b.ck.Pages {
			b.covered[r.PFN/64] |= 1 << (r.PFN % 64)
		}
		b.applyBlocks(h.Flags&FlagSyncStart != 0)
	}
	b.maxGeneration = h.Generation
	if h.Kind.commits() {
		b.keepDisk()
		b.spare = append(b.spare[:0], b.ck.Machine...)
		b.machine, b.spare = b.spare, b.machine
		b.status = Status{State: StateCommitted, Generation: h.Generation, Epoch: h.Epoch, Held: h.Flags&FlagHeld != 0}
	}
}

// release drops every reference into the caller's buffer.
func (b *Backup) release() {
	clear(b.ck.Pages)
	clear(b.src)
	clear(b.ck.Disk.Writes)
	b.ck.Machine, b.ck.MemHash = nil, nil
	b.after = b.after[:0]
}

func (b *Backup) page(pfn uint64) []byte {
	off := pfn * PageSize
	return b.mem[off : off+PageSize : off+PageSize]
}

func (b *Backup) isCovered(pfn uint64) bool { return b.covered[pfn/64]&(1<<(pfn%64)) != 0 }
