package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// The primary's full checkpoints, and the durability of released disk
// writes that they and the release marks depend on.

// syncer makes released disk writes durable off the engine, each time the
// engine asks, until ctx ends: it calls SyncDisk and advances durable to
// syncWant, an LSN through which the engine saw every output released; the
// engine's next boundary marks the release. (Committed alone would not
// do: an ack may overtake the engine's Hold of the output it commits, and
// the engine releases that output itself, later.) A SyncDisk failure is
// kept for the engine, which stops: after a failed fdatasync the kernel
// may have dropped the writes, and the backup, which still has them, must
// take over.
func (p *Primary) syncer(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.syncKick:
		}
		if err := p.syncDisk(p.syncWant.Load()); err != nil {
			p.syncErr.Store(&err)
			p.poke()
			return
		}
		p.poke()
	}
}

// syncDisk calls SyncDisk and advances durable to through, an LSN at or
// below which every output was released before the call. Safe from any
// goroutine.
func (p *Primary) syncDisk(through uint64) error {
	if err := p.SyncDisk(); err != nil {
		return err
	}
	for {
		d := p.durable.Load()
		if d >= through || p.durable.CompareAndSwap(d, through) {
			return nil
		}
	}
}

// sync sends the backup a full checkpoint of the guest at a new EntrySync,
// stop-and-copy: the guest does not run meanwhile (the engine is here).
// It starts a backup that connected with Run and resynchronises one that
// diverged or lost part of the log; an attaching backup gets its full
// checkpoint by pre-copy instead (precopy.go).
func (p *Primary) sync() error {
	start := time.Now()
	if p.startImage == nil {
		p.Stats.KeptBlocks.Store(0) // a resync: the backup's image has changed since its hashes
	}
	s, n, err := p.commitSync(nil, true)
	if err != nil {
		return err
	}
	p.log.Info("full checkpoint sent", "lsn", s, "bytes", n, "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// commitSync appends an EntrySync and sends the sync commit after it: the
// pages pfns (nil: all of memory, with FlagSyncStart if start), the
// machine state and the disk writes held. It returns the sync's LSN and
// the commit's size.
//
// The guest state it ships has seen every disk write so far complete. The
// checkpoint carries those still held (a divergence stops the backup's
// acks while the guest runs on), so that a backup going live writes them
// again; every other write is released, and made durable here before the
// checkpoint leaves. Held frames are not carried: one lost with the
// primary is a network loss, as in checkpoint mode.
func (p *Primary) commitSync(pfns []uint64, start bool) (uint64, int, error) {
	p.append(Entry{Type: EntrySync})
	s := p.lsn
	p.loggedHeld = false // the backup starts over at not held: logHold says if it is
	// The backup's guest starts here, from the checkpoint, with a new
	// signature interval: so does the primary's.
	p.unlogged, p.needMark = false, true
	p.lastSync.Store(s)
	p.flush()
	disk := format.DiskLog{Durable: s}
	for i, w := range p.out.HeldDiskWrites() {
		if i == 0 {
			disk.Durable = w.Pos - 1
		}
		disk.Writes = append(disk.Writes, format.DiskWrite{Epoch: w.Pos, Off: w.Off, Data: w.Data})
	}
	// After the look at what is held, so that a write released in between
	// is carried, durable, or both (writing it again is harmless).
	if p.SyncDisk != nil {
		if err := p.syncDisk(p.committed.Load()); err != nil { // the engine: outside any Hold
			return 0, 0, fmt.Errorf("making released disk writes durable: %w", err)
		}
	}
	h := format.Header{Kind: format.KindSyncCommit, Generation: p.gen.Load(), Epoch: s}
	if start {
		h.Flags = format.FlagSyncStart
	}
	if err := p.beginCheckpoint(h, pfns, nil); err != nil {
		return 0, 0, err
	}
	if p.blocks != nil {
		if start {
			p.blocks.MarkAll()
		}
		blocks := p.blocks.Take(nil)
		if err := p.addBlocks(blocks, p.startKept(blocks)); err != nil {
			return 0, 0, err
		}
		if p.cfg.Verify {
			if err := p.addDiskHashes(); err != nil {
				return 0, 0, err
			}
		}
	}
	state, err := p.m.SaveState()
	if err != nil {
		p.enc.Abort()
		return 0, 0, fmt.Errorf("saving machine state for the sync at LSN %d: %w", s, err)
	}
	if err := p.enc.SetDiskLog(disk); err != nil {
		p.enc.Abort()
		return 0, 0, err
	}
	data, err := p.enc.Finish(state, p.cfg.Verify)
	if err != nil {
		return 0, 0, err
	}
	p.enqueue(message{format.MsgCheckpoint, data})
	p.Stats.Syncs.Add(1)
	return s, len(data), nil
}

// startKept is, for the first full checkpoint of a backup that connected
// with Run, those of blocks (all of them) that the backup's image has: the
// guest has not run yet, so the engine waits for every range's hash, at
// most FailureTimeout between two messages. It is nil for any other full
// checkpoint, and if the hashes do not come or the link fails (the blocks
// then go with their data).
func (p *Primary) startKept(blocks []uint64) []uint64 {
	image := p.startImage
	p.startImage = nil
	if image == nil {
		return nil
	}
	var kept []uint64
	for done := 0; done < len(blocks); {
		arrived := image.Arrived()
		n, k, err := image.Compare(blocks[done:], kept)
		if err != nil {
			p.log.Warn("could not compare the disk with the backup's image; copying all of it", "err", err)
			return nil
		}
		if kept, done = k, done+n; done == len(blocks) {
			break
		}
		if !p.awaitHashes(arrived) {
			return nil
		}
	}
	p.Stats.KeptBlocks.Store(uint64(len(kept)))
	p.log.Info("the backup's image has disk blocks already: they go without their data", "blocks", len(kept), "of", len(blocks))
	return kept
}

// awaitHashes waits for arrived (more of the backup's image hashes): false
// if none come within FailureTimeout, or the link fails.
func (p *Primary) awaitHashes(arrived <-chan struct{}) bool {
	wait := time.NewTimer(p.cfg.FailureTimeout)
	defer wait.Stop()
	select {
	case <-arrived:
		return true
	case <-wait.C:
		p.log.Warn("the backup's image hashes stopped coming; copying all of the disk")
	case <-p.linkCtx.Done(): // the engine drops the backup
	}
	return false
}

// beginCheckpoint begins a checkpoint of header h and adds the pages pfns
// (nil: all of memory) from the guest's memory as it is now, those of
// them in kept (in the same order) as KEPT. On error the checkpoint is
// abandoned.
func (p *Primary) beginCheckpoint(h format.Header, pfns, kept []uint64) error {
	mem := p.m.Memory()
	if p.enc == nil {
		cache, err := format.NewPageCache(len(mem))
		if err != nil {
			return err
		}
		p.enc = format.NewEncoder(cache)
		if p.blocks != nil {
			if err := p.enc.SetDiskSize(p.diskSize); err != nil {
				return err
			}
		}
	}
	if err := p.enc.Begin(nil, h); err != nil {
		return err
	}
	add := func(pfn uint64) error {
		addPage := p.enc.AddPage
		if len(kept) > 0 && kept[0] == pfn {
			kept, addPage = kept[1:], p.enc.AddKeptPage
		}
		if err := addPage(pfn, mem[pfn*format.PageSize:(pfn+1)*format.PageSize]); err != nil {
			p.enc.Abort()
			return fmt.Errorf("encoding page %d for %v: %w", pfn, h, err)
		}
		return nil
	}
	if pfns == nil {
		for pfn := range uint64(len(mem)) / format.PageSize {
			if err := add(pfn); err != nil {
				return err
			}
		}
		return nil
	}
	for _, pfn := range pfns {
		if err := add(pfn); err != nil {
			return err
		}
	}
	return nil
}

// addBlocks adds the disk blocks to the checkpoint begun, read as the guest
// sees the disk (its held writes over it), but for those in kept (in the
// same order), which the backup's image has: KEPT. The engine is here, so
// the guest does not run. On error the checkpoint is abandoned.
func (p *Primary) addBlocks(blocks, kept []uint64) error {
	size := p.diskSize
	buf := make([]byte, format.DiskBlockSize)
	for _, b := range blocks {
		if len(kept) > 0 && kept[0] == b {
			kept = kept[1:]
			if err := p.enc.AddKeptDiskBlock(b); err != nil {
				p.enc.Abort()
				return err
			}
			continue
		}
		off := int64(b) * format.DiskBlockSize
		block := buf[:min(int64(len(buf)), size-off)]
		if _, err := p.out.ReadAt(block, off); err != nil {
			p.enc.Abort()
			return fmt.Errorf("reading disk block %d for the backup's image: %w", b, err)
		}
		if err := p.enc.AddDiskBlock(b, block); err != nil {
			p.enc.Abort()
			return err
		}
	}
	return nil
}

// addDiskHashes (--verify) has the checkpoint begun carry the hash of every
// range of the disk as the guest sees it, for the backup to compare with
// its image; the engine is here, so the guest does not run. On error the
// checkpoint is abandoned.
func (p *Primary) addDiskHashes() error {
	buf := make([]byte, format.DiskHashRange)
	hashes := make([]format.DiskRangeHash, format.DiskHashRanges(p.diskSize))
	for r := range hashes {
		sum, err := format.HashDiskRange(p.out, p.diskSize, uint64(r), buf)
		if err != nil {
			p.enc.Abort()
			return err
		}
		hashes[r] = format.DiskRangeHash{Range: uint64(r), Sum: sum}
	}
	return p.enc.SetDiskHashes(p.diskSize, hashes)
}

// flushDisk waits until every disk write held so far is released (the
// backup has the log through it: awaitAcks), then makes them durable.
func (p *Primary) flushDisk() error {
	target := p.lastWrite
	p.flush()
	if err := p.awaitAcks(target); err != nil {
		return err
	}
	if p.SyncDisk != nil {
		return p.syncDisk(p.committed.Load()) // the engine: outside any Hold
	}
	return nil
}

// errGapInAwait fails the link to a backup that lost part of the log while
// the engine waits for its acks (awaitAcks).
var errGapInAwait = errors.New("the backup lost part of the log while the guest waits for its outputs to be released; its full checkpoint needs the guest stopped between exits")

// awaitAcks waits until the backup has acknowledged the log through
// target, so that what is held up to there is released (alone, it is at
// once). If the backup is lost meanwhile, the backup-lost rule runs here.
// A backup that asks for a full checkpoint meanwhile gives no more acks
// before one, which the engine can send only at a boundary, not in the
// exit it is completing here: one that diverged cannot go live before it,
// so what is held is released now (as resyncWhileRunning does); one that
// lost part of the log could take over from before the gap, so what came
// after stays held, and it is lost instead.
func (p *Primary) awaitAcks(target uint64) error {
	for p.recording && p.committed.Load() < target {
		if asked := p.resync.Load(); asked&resyncAfterGap != 0 {
			p.linkFailed(errGapInAwait)
		} else if asked != 0 {
			return p.releaseHeld()
		}
		select {
		case <-p.ackedCh:
		case <-p.linkCtx.Done():
			if err := p.ctx.Err(); err != nil {
				return err
			}
			if err := p.backupLost(); err != nil {
				return err
			}
		}
	}
	return nil
}
