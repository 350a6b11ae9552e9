package replay

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Stats counts what an engine did. Every field is safe to read at any time.
type Stats struct {
	// Primary.
	Exits     atomic.Uint64 // synchronous exits recorded
	Landings  atomic.Uint64 // asynchronous stops recorded by signature
	Entries   atomic.Uint64 // log entries appended
	Batches   atomic.Uint64 // batches shipped
	LogBytes  atomic.Uint64 // encoded log shipped
	Acked     atomic.Uint64 // highest LSN the backup acknowledged
	Syncs     atomic.Uint64 // full checkpoints sent
	Precopied atomic.Uint64 // pages sent by pre-copy rounds
	// PrecopyPass and PrecopyLeft say how far the pre-copy in progress is:
	// its pass (0: none in progress) and the pages left in that pass.
	PrecopyPass, PrecopyLeft atomic.Uint64
	PrecopyPassPages         atomic.Uint64 // pages of the pass in progress
	// PrecopyPassBlocks and PrecopyBlocksLeft are the same for a mirrored
	// disk's blocks. KeptBlocks are the blocks that the last full
	// checkpoint sent as the backup's image had them (session.BackupImage),
	// without their data: only a backup's first has any.
	PrecopyPassBlocks, PrecopyBlocksLeft atomic.Uint64
	KeptBlocks                           atomic.Uint64
	// KeptPages are the pages that the last pre-copy's first pass sent as
	// the backup's memory had them (session.BackupMemory): a node that
	// handed its guest over and joins the new primary has most.
	KeptPages   atomic.Uint64
	Resyncs     atomic.Uint64 // full checkpoints the backup asked for
	BackupsLost atomic.Uint64 // times the primary went on alone
	RxDropped   atomic.Uint64 // received frames dropped: the queue was full

	// Backup.
	Replayed       atomic.Uint64 // entries applied
	Received       atomic.Uint64 // highest LSN received
	Divergences    atomic.Uint64 // divergences detected
	BreakpointHits atomic.Uint64 // stops at a landing's RIP, matching or not
	Applied        atomic.Uint64 // full checkpoints applied
	Rounds         atomic.Uint64 // pre-copy round messages applied

	// The status line's previous sample.
	lineMu    sync.Mutex
	lineAt    time.Time
	lineBytes uint64
}

// PrimaryLine renders a primary's status line; its log rate is over the
// time since the previous call.
func (s *Stats) PrimaryLine() string {
	s.lineMu.Lock()
	now, bytes := time.Now(), s.LogBytes.Load()
	rate := 0.0
	if secs := now.Sub(s.lineAt).Seconds(); !s.lineAt.IsZero() && secs > 0 {
		rate = float64(bytes-s.lineBytes) / 1e3 / secs
	}
	s.lineAt, s.lineBytes = now, bytes
	s.lineMu.Unlock()
	line := fmt.Sprintf("lsn acked %d  exits %d  landings %d  log %.1f KB/s (%d entries, %d batches)  syncs %d (asked %d)  rx dropped %d",
		s.Acked.Load(), s.Exits.Load(), s.Landings.Load(), rate,
		s.Entries.Load(), s.Batches.Load(), s.Syncs.Load(), s.Resyncs.Load(), s.RxDropped.Load())
	if pass := s.PrecopyPass.Load(); pass > 0 {
		line += fmt.Sprintf("  pre-copy pass %d, %d pages to go", pass, s.PrecopyLeft.Load())
	}
	return line
}

// BackupLine renders a backup's status line.
func (s *Stats) BackupLine() string {
	return fmt.Sprintf("lsn received %d replayed %d  breakpoint hits %d  divergences %d  checkpoints applied %d",
		s.Received.Load(), s.Replayed.Load(), s.BreakpointHits.Load(), s.Divergences.Load(), s.Applied.Load())
}
