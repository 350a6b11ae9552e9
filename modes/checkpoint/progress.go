package checkpoint

import (
	"sync"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// SyncStep is where a full sync stands: its round (1, every page, read
// while the guest runs; then the pages dirtied meanwhile; the last, the
// commit, with the guest paused), the pages (and a mirrored disk's blocks)
// of the round and how many of them are encoded.
type SyncStep struct {
	// Round counts from 1; Commit says it is the last.
	Round  int
	Commit bool
	// Pages are the round's pages, Done those encoded so far; AllPages
	// those of every round so far, this one's included.
	Pages, Done, AllPages int
	// KeptPages are those of the first round that the backup's memory
	// had already (BackupMemory), sent without their data.
	KeptPages int
	// Blocks, DoneBlocks and AllBlocks are the same for a mirrored disk's
	// blocks (DiskBlockSize bytes each). KeptBlocks are those of the
	// first round that the backup's image had already (BackupImage), sent
	// without their data.
	Blocks, DoneBlocks, AllBlocks, KeptBlocks int
	// Began is when the sync began, Shipped the bytes of its messages
	// written so far.
	Began   time.Time
	Shipped int64
	// Finished says the commit was written to the link: the sync is over
	// (the backup acknowledges it next).
	Finished bool
}

// syncTracker follows a full sync on the sender's goroutine, for Syncing
// and the sync observer.
type syncTracker struct {
	mu      sync.Mutex // protects step, active, observe
	step    SyncStep
	active  bool
	observe func(SyncStep)
	// done and doneBlocks are step.Done and step.DoneBlocks, counted
	// without mu. kept and keptPages are step.KeptBlocks and
	// step.KeptPages, counted by the epoch loop (the sender may begin the
	// first round after it counts some), which sets them to 0 before each
	// sync.
	done, doneBlocks, kept, keptPages atomic.Int64
}

// SetSyncObserver has observe told each step of every full sync from now
// on: as each round begins, and once the commit is written (Finished). It
// runs on the sender's goroutine and must be quick.
func (p *Primary) SetSyncObserver(observe func(SyncStep)) {
	p.syncing.mu.Lock()
	p.syncing.observe = observe
	p.syncing.mu.Unlock()
}

// Syncing returns the step of the full sync under way, if one is. Safe to
// call from any goroutine.
func (p *Primary) Syncing() (SyncStep, bool) {
	t := &p.syncing
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.step
	s.Done, s.DoneBlocks, s.KeptBlocks = int(t.done.Load()), int(t.doneBlocks.Load()), int(t.kept.Load())
	s.KeptPages = int(t.keptPages.Load())
	return s, t.active
}

// begin notes that the sender starts encoding a message of h's kind with
// pages pages and blocks disk blocks.
func (t *syncTracker) begin(h format.Header, pages, blocks int, now time.Time) {
	if h.Kind != format.KindSyncRound && h.Kind != format.KindSyncCommit {
		return
	}
	t.mu.Lock()
	if h.Flags&format.FlagSyncStart != 0 || !t.active {
		t.step = SyncStep{Began: now}
	}
	t.active = true
	t.step.Round++
	t.step.Commit = h.Kind == format.KindSyncCommit
	t.step.Pages, t.step.Blocks = pages, blocks
	t.step.AllPages += pages
	t.step.AllBlocks += blocks
	t.done.Store(0)
	t.doneBlocks.Store(0)
	s, observe := t.step, t.observe
	t.mu.Unlock()
	if observe != nil {
		observe(s)
	}
}

// page notes a page encoded; block a disk block.
func (t *syncTracker) page()  { t.done.Add(1) }
func (t *syncTracker) block() { t.doneBlocks.Add(1) }

// sent notes that the message begun last, of h's kind and n bytes, was
// written.
func (t *syncTracker) sent(h format.Header, n int) {
	if h.Kind != format.KindSyncRound && h.Kind != format.KindSyncCommit {
		return
	}
	t.mu.Lock()
	t.step.Shipped += int64(n)
	if h.Kind != format.KindSyncCommit {
		t.mu.Unlock()
		return
	}
	t.active = false
	t.step.Finished, t.step.Done, t.step.DoneBlocks = true, int(t.done.Load()), int(t.doneBlocks.Load())
	t.step.KeptBlocks, t.step.KeptPages = int(t.kept.Load()), int(t.keptPages.Load())
	s, observe := t.step, t.observe
	t.mu.Unlock()
	if observe != nil {
		observe(s)
	}
}
