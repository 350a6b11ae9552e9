package replay

import (
	"net"
	"time"

	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/vmm/machine"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// precopy is a full checkpoint being pre-copied to a backup that attached
// to the running primary (the paper's FT VMotion, with checkpoint mode's
// sync rounds), or that asked for one (resyncWhileRunning). At an engine
// boundary where one is due (precopyDue) the primary sends a round message
// of at most PrecopyChunk pages (or blockChunk disk blocks, after the
// pages): passes as session.Precopy plans them, the first over all of
// memory and a mirrored disk, each later one over what was written
// meanwhile. When the plan says so it appends the sync entry and sends the
// commit, with the pages written since the last pass and the machine
// state, in one stop.
//
// Until then the primary is alone: it logs nothing (so the sync entry's
// LSN, which the rounds carry as their epoch, is known from the start) and
// its outputs leave at once. A backup lost meanwhile is dropped; it does
// not protect the guest (it never did, or it cannot go live before this
// sync commits: resyncWhileRunning), so no generation is contested. The
// backup applies the rounds to its memory as they come and commits at the
// sync entry.
type precopy struct {
	epoch   uint64           // the LSN of the sync entry to come
	plan    *session.Precopy // the passes
	todo    []uint64         // pages of this pass not sent yet
	blocks  []uint64         // a mirrored disk's blocks of this pass not sent yet (after the pages)
	written *machine.Bitmap  // scratch for Machine.Written
	// image holds the backup's image hashes during the first pass, whose
	// blocks of ranges the backup has go without their data (nextBlocks);
	// nil after it, or without a mirrored disk. memory is the same for the
	// backup's memory and the pass's pages (nextPages), nil unless the
	// backup offered them in its Hello or the pre-copy is a resync, which
	// asks for them; compared says it is set. hashesSince is when the
	// pass began waiting for hashes (zero: it is not).
	image       *session.BackupImage
	memory      *session.BackupMemory
	compared    bool
	hashesSince time.Time
	first       bool // the next round message starts the sync
	// ask says the first round message is to ask for the backup's hashes
	// of series p.hashes (FlagSendHashes) and carry nothing: a resync's.
	ask   bool
	began time.Time
	next  time.Duration // not before (guestClock.host): the guest's share of the time
	sent  uint64        // round messages sent
	bytes int           // sent so far
}

// blockChunk is the most disk blocks a round message carries (16 MiB).
const blockChunk = 256

// precopyEvery is the least time between two round messages: the guest
// runs at least that long, and at least as long as the last round took,
// so pre-copy takes at most half of its time. (A guest that stops often
// would otherwise see a round at every stop.)
const precopyEvery = time.Millisecond

// precopyAhead bounds the round messages sent that the backup has not
// said it applied (MsgRounds): when the sync commits, the backup is at most
// that far behind, and outputs, which then wait for its acks, not long.
const precopyAhead = 4

// precopyDue says whether a round message is due at this boundary, and if
// not, how long until it is. None is due while precopyAhead rounds await
// the backup (the link or the backup is slower than the pre-copy): the
// guest runs on instead of waiting; the backup's report wakes the engine.
func (p *Primary) precopyDue() (bool, time.Duration) {
	pc := p.precopy
	wait := pc.next - p.clock.host()
	if wait <= 0 && pc.sent >= p.roundsApplied.Load()+precopyAhead {
		return false, precopyEvery
	}
	return wait <= 0, wait
}

// attachBackup greets a backup that attached while the primary ran alone
// and starts pre-copying its full checkpoint.
func (p *Primary) attachBackup(conn net.Conn) {
	var image *session.BackupImage
	if p.blocks != nil {
		image = session.NewBackupImage(p.out, p.diskSize)
	}
	memory, err := p.connectLink(conn, image, true)
	if err == nil {
		err = p.startPrecopy(image, memory)
	}
	if err != nil {
		p.log.Warn("a backup could not attach", "err", err)
		p.disconnect()
		p.protected.Store(false)
		return
	}
	p.log.Info("a backup attached; pre-copying its full checkpoint while the guest runs", "lsn", p.precopy.epoch)
}

// resyncWhileRunning answers a backup that asked for a full checkpoint
// because it diverged or refused one, by pre-copy on the same link, as to a
// backup attaching: the guest runs meanwhile, where a stop-and-copy (sync)
// would stop it for all of memory. Such a backup stopped replaying where it
// asked (it is not in sync) and cannot go live before it applies the commit
// of a later sync: it protects the guest no longer, so the primary runs
// alone until the commit and releases what it holds now, which no state
// the backup could go live with contradicts. (A backup that lost part of
// the log instead still has the guest up to the gap and could take over
// from there: it gets a stop-and-copy, which keeps that.)
func (p *Primary) resyncWhileRunning() error {
	p.flush() // the log so far goes first: the sync entry follows on
	p.recording, p.unlogged = false, false
	if err := p.releaseHeld(); err != nil {
		return err
	}
	// What it holds has changed since the Hello's hashes, if it sent any:
	// the first round asks for a series of its own.
	hashes := &session.Hashes{For: format.HashesFor{Generation: p.gen.Load(), Epoch: p.lsn + 1},
		Memory: session.NewBackupMemory(uint64(len(p.m.Memory())) / format.PageSize)}
	if p.blocks != nil {
		hashes.Image = session.NewBackupImage(p.out, p.diskSize)
	}
	if err := p.startPrecopy(hashes.Image, hashes.Memory); err != nil {
		return err
	}
	p.hashes.Set(hashes)
	p.precopy.ask = true
	p.log.Info("pre-copying a full checkpoint to the backup that asked for one, while the guest runs", "lsn", p.precopy.epoch)
	return nil
}

// startPrecopy starts the pass over all of memory (compared with the
// backup's through memory, if not nil) and a mirrored disk (compared with
// the backup's image through image).
func (p *Primary) startPrecopy(image *session.BackupImage, memory *session.BackupMemory) error {
	pages := uint64(len(p.m.Memory())) / format.PageSize
	p.Stats.KeptBlocks.Store(0)
	p.Stats.KeptPages.Store(0)
	pc := &precopy{epoch: p.lsn + 1, written: machine.NewBitmap(pages), first: true, began: time.Now(), image: image,
		memory: memory, compared: memory != nil,
		plan: session.NewPrecopy(p.cfg.PrecopyRounds, p.cfg.PrecopyDone, pages, p.blocks)}
	if err := p.m.Harvest(pc.written); err != nil { // what is written from now on
		return err
	}
	pc.todo, pc.blocks = pc.plan.First(nil, nil)
	p.roundsApplied.Store(0)
	p.resync.Store(0) // answered by this sync
	// A request from before the sync to come is moot (handleResync), and
	// the backup is not in sync until it acknowledges it (InSync).
	p.lastSync.Store(pc.epoch)
	p.precopy = pc
	p.precopying.Store(true)
	return nil
}

// precopyStep sends the next round message. At the end of a pass the
// pages written meanwhile make the next one, unless it is time for the
// final stop.
func (p *Primary) precopyStep() error {
	pc := p.precopy
	began := time.Now()
	defer func() { pc.next = p.clock.host() + max(precopyEvery, time.Since(began)) }()
	if len(pc.todo) == 0 && len(pc.blocks) == 0 {
		pc.written.Clear()
		if err := p.m.Harvest(pc.written); err != nil {
			return err
		}
		pc.image, pc.memory = nil, nil // a later pass sends what was written: no range is equal
		p.hashes.Set(nil)              // later hashes of the series are dropped
		var more bool
		if pc.todo, pc.blocks, more = pc.plan.Next(pc.written, pc.todo, pc.blocks); !more {
			return p.endPrecopy() // the pages left, in pc.todo, go in the final stop
		}
	}
	pass := uint64(pc.plan.Pass())
	if p.Stats.PrecopyPass.Load() != pass {
		p.Stats.PrecopyPassPages.Store(uint64(len(pc.todo)))
		p.Stats.PrecopyPassBlocks.Store(uint64(len(pc.blocks)))
	}
	p.Stats.PrecopyBlocksLeft.Store(uint64(len(pc.blocks)))
	p.Stats.PrecopyPass.Store(pass)
	p.Stats.PrecopyLeft.Store(uint64(len(pc.todo)))
	h := format.Header{Kind: format.KindSyncRound, Generation: p.gen.Load(), Epoch: pc.epoch}
	if pc.first {
		h.Flags = format.FlagSyncStart
	}
	// A message of pages, or once they are sent, of blocks; or the
	// question alone.
	var chunk, keptPages, blocks, kept []uint64
	if pc.ask {
		// The backup hashes what it holds once it has applied this
		// message, and the pass compares with that: it carries nothing.
		h.Flags |= format.FlagSendHashes
		chunk, pc.ask = []uint64{}, false
	} else {
		var ready bool
		if chunk, keptPages, ready = p.nextPages(); !ready {
			return nil // nothing to send yet
		}
		if len(chunk) == 0 {
			chunk = []uint64{} // no pages (nil would be all of memory)
			var err error
			if blocks, kept, err = p.nextBlocks(); err != nil || len(blocks) == 0 {
				return err // nothing to send yet
			}
		}
	}
	if err := p.beginCheckpoint(h, chunk, keptPages); err != nil {
		return err
	}
	if err := p.addBlocks(blocks, kept); err != nil {
		return err
	}
	data, err := p.enc.Finish(nil, false)
	if err != nil {
		return err
	}
	p.enqueue(message{format.MsgCheckpoint, data})
	pc.sent++
	pc.first = false
	p.Stats.Precopied.Add(uint64(len(chunk)))
	pc.todo = pc.todo[len(chunk):]
	pc.bytes += len(data)
	return nil
}

// nextPages takes the next message's pages from the pass's, at most
// PrecopyChunk with their data (none once they are all sent). On the first
// pass it also compares them with the backup's memory, and those the
// backup has go kept, without data (the guest does not run until they are
// encoded: CompareStill): a kept page costs a hash, not bytes, so the
// message takes pages until PrecopyChunk go with data or it has spent
// PrecopyCompare comparing (a range of zeros hashes in microseconds, one
// of data in about 0.2 ms). It is not ready if the hashes of the next ranges
// have not arrived; if none arrive for FailureTimeout, the rest of the
// pass goes with its data.
func (p *Primary) nextPages() (chunk, kept []uint64, ready bool) {
	pc := p.precopy
	n := min(len(pc.todo), p.cfg.PrecopyChunk)
	if pc.memory != nil && n > 0 {
		n, kept = p.compareChunk()
		p.Stats.KeptPages.Add(uint64(len(kept)))
		if p.hashesLate(n > 0) {
			p.log.Warn("the backup's memory hashes stopped coming; sending the rest of memory without comparing", "pages left", len(pc.todo))
			pc.memory, n = nil, min(len(pc.todo), p.cfg.PrecopyChunk)
		} else if n == 0 {
			return nil, nil, false
		}
	}
	return pc.todo[:n:n], kept, true
}

// compareChunk compares the pass's next pages with the backup's memory,
// PrecopyChunk-with-data at a time, for PrecopyCompare at most, and returns
// how many it decided (stopping at a range whose hash has not arrived) and
// those of them kept: at most PrecopyChunk of them are not.
func (p *Primary) compareChunk() (n int, kept []uint64) {
	pc := p.precopy
	began := time.Now()
	for n < len(pc.todo) && time.Since(began) < p.cfg.PrecopyCompare {
		budget := p.cfg.PrecopyChunk - (n - len(kept)) // pages with data still allowed
		if budget <= 0 {
			break
		}
		step := min(len(pc.todo)-n, budget)
		decided, k := pc.memory.CompareStill(pc.todo[n:n+step], p.m.Memory(), kept)
		n, kept = n+decided, k
		if decided < step {
			break // the next range's hash has not arrived
		}
	}
	return n, kept
}

// nextBlocks takes the next message's blocks from the pass's, at most
// blockChunk, and on the first pass those of them the backup's image has,
// kept. It may return none: the hashes of the next ranges have not
// arrived. If none arrive for FailureTimeout (the backup's disk is slow,
// or failing), the rest of the pass goes with its data.
func (p *Primary) nextBlocks() (blocks, kept []uint64, err error) {
	pc := p.precopy
	n := min(len(pc.blocks), blockChunk)
	if pc.image != nil {
		if n, kept, err = pc.image.Compare(pc.blocks[:n], nil); err != nil {
			return nil, nil, err
		}
		p.Stats.KeptBlocks.Add(uint64(len(kept)))
		if p.hashesLate(n > 0) {
			p.log.Warn("the backup's image hashes stopped coming; copying the rest of the disk without comparing", "blocks left", len(pc.blocks))
			pc.image = nil
		}
	}
	blocks, pc.blocks = pc.blocks[:n], pc.blocks[n:]
	return blocks, kept, nil
}

// hashesLate notes whether the backup's range hashes let the pass decide
// anything (decided), and reports whether none have for FailureTimeout:
// the pass then goes on without them.
func (p *Primary) hashesLate(decided bool) bool {
	pc := p.precopy
	switch {
	case decided:
		pc.hashesSince = time.Time{}
	case pc.hashesSince.IsZero():
		pc.hashesSince = time.Now()
	case time.Since(pc.hashesSince) > p.cfg.FailureTimeout:
		pc.hashesSince = time.Time{}
		return true
	}
	return false
}

// finishPrecopy ends the pre-copy in progress at once with its final
// stop, for a primary that is stopping (Run's ctx ended: SIGTERM, a
// planned failover): the commit carries what the pass under way has not
// sent and what was written since it began, so that the backup can go live
// where the guest stopped, as one in sync does, instead of being left
// without a full checkpoint and the guest with nobody. Nothing sent yet,
// it is a stop-and-copy. Pages the backup's hashes would have kept go with
// their data: a stop is no time to wait for hashes.
func (p *Primary) finishPrecopy() error {
	if err := p.lastStopCommit(); err != nil {
		return err
	}
	// The backup's guest starts a signature interval at the sync; the
	// primary's, which will not run again, does so here.
	p.needMark = false
	return p.m.Mark()
}

// lastStopCommit sends finishPrecopy's commit.
func (p *Primary) lastStopCommit() error {
	pc := p.precopy
	if pc.first {
		p.stopPrecopy()
		p.recording = true
		return p.sync()
	}
	pc.written.Clear()
	if err := p.m.Harvest(pc.written); err != nil { // written since the pass began
		return err
	}
	for _, pfn := range pc.todo {
		pc.written.Set(pfn)
	}
	pc.todo = pc.written.AppendPages(pc.todo[:0])
	for _, b := range pc.blocks { // the commit takes the blocks marked
		p.blocks.Mark(int64(b)*format.DiskBlockSize, format.DiskBlockSize)
	}
	p.log.Info("stopping: the backup's full checkpoint goes in this last stop", "pages", len(pc.todo), "disk blocks", len(pc.blocks))
	return p.endPrecopy()
}

// dropPrecopying lets go the backup the pre-copy in progress was for (lost,
// or detached): it cannot go live before the commit, so no contest is
// needed, and the primary goes on alone in its generation.
func (p *Primary) dropPrecopying() {
	p.stopPrecopy()
	p.disconnect()
	p.protected.Store(false)
}

// stopPrecopy forgets the pre-copy in progress.
func (p *Primary) stopPrecopy() {
	p.precopy = nil
	p.precopying.Store(false)
	p.hashes.Set(nil)
	p.Stats.PrecopyPass.Store(0)
}

// endPrecopy is the final stop: recording starts at the sync entry, whose
// commit carries the pages left.
func (p *Primary) endPrecopy() error {
	pc := p.precopy
	p.stopPrecopy()
	p.recording = true
	if p.lsn+1 != pc.epoch { // cannot happen: nothing is logged while alone
		p.log.Error("the pre-copied sync would land at another LSN; stopping to copy it all", "lsn", p.lsn+1, "rounds for", pc.epoch)
		return p.sync()
	}
	stop := time.Now()
	s, n, err := p.commitSync(pc.todo, false)
	if err != nil {
		return err
	}
	attrs := []any{"lsn", s, "passes", pc.plan.Pass(), "bytes", pc.bytes + n,
		"took", time.Since(pc.began).Round(time.Microsecond), "final stop", time.Since(stop).Round(time.Microsecond), "pages in it", len(pc.todo)}
	if pc.compared {
		attrs = append(attrs, "pages the backup had", p.Stats.KeptPages.Load())
	}
	if p.blocks != nil {
		attrs = append(attrs, "disk blocks the backup had", p.Stats.KeptBlocks.Load())
	}
	p.log.Info("full checkpoint sent by pre-copy", attrs...)
	return nil
}
