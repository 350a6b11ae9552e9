package checkpoint

import (
	"context"
	"fmt"
	"slices"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The primary's full syncs: pre-copy rounds while the guest runs, then the
// pause that commits them.

// roundChunk is the most pages a pre-copy round message carries (64 MiB
// of memory): a round over a large memory is several messages, each
// encoded and shipped while the next is read, and none near
// MaxCheckpoint. blockChunk is the same for a mirrored disk's blocks (16
// MiB), which follow the pages in messages of their own.
const (
	roundChunk = 16384
	blockChunk = 256
)

// sync brings the backup to the guest's current state: pre-copy rounds
// while the guest runs, as session.Precopy plans them, then a final round
// with the guest paused that commits epoch Position(). A round is
// harvested only once the backup has applied the one before, so that the
// pause at the end copies what was dirtied during one round's shipping,
// not during all of them. Each round is logged, with its pages, how long
// it took and the harvest's pause.
func (p *Primary) sync(ctx context.Context, dirty *machine.Bitmap, captures chan<- *capture, failed <-chan error) error {
	epoch := p.pos.Load()
	began := p.now()
	p.log.Info("full sync", "generation", p.gen, "epoch", epoch, "pages", dirty.Len())
	p.roundsSent = 0
	p.roundsApplied.Store(0)
	p.syncEpoch.Store(epoch)
	p.syncAcked.Store(false)
	p.mu.Lock()
	clear(p.inflight) // epochs before the sync will never be acknowledged
	p.mu.Unlock()
	if p.cfg.PrecopyRounds == 0 {
		return p.stopAndCopy(ctx, dirty, captures, failed, began)
	}
	// Round 1 reads every page live; the harvest before it clears the log,
	// so any page written while it is read is sent again. So with a
	// mirrored disk's blocks, and the ranges of them hashed to compare
	// with the backup's image.
	if _, err := p.harvestWhilePaused(dirty); err != nil {
		return err
	}
	hashes, ask := p.hashes.Get(), false
	if p.syncsBegun > 0 && (p.askImage || p.askMemory) {
		// The backup's image and memory have changed since the last
		// series: ask for another, named by this sync.
		hashes, ask = p.newBackupHashes(format.HashesFor{Generation: p.gen, Epoch: epoch}, true), true
		p.hashes.Set(hashes)
	}
	p.syncsBegun++
	p.spoiled.Store(false)
	p.syncing.kept.Store(0)
	p.syncing.keptPages.Store(0)
	plan := session.NewPrecopy(p.cfg.PrecopyRounds, p.cfg.PrecopyDone, dirty.Len(), p.blocks)
	pfns, blocks := plan.First(nil, nil)
	p.syncPeak = 0
	for more := true; more; {
		round, start := plan.Pass(), p.now()
		if err := p.sendRound(ctx, captures, failed, epoch, pfns, blocks, hashes, ask); err != nil {
			return err
		}
		stall, err := p.harvestWhilePaused(dirty)
		if err != nil {
			return err
		}
		attrs := []any{"round", round, "pages", len(pfns)}
		if hashes != nil && hashes.Memory != nil {
			attrs = append(attrs, "pages the backup had", hashes.Memory.Kept())
		}
		attrs = append(attrs, "disk blocks", len(blocks))
		if hashes != nil && hashes.Image != nil {
			attrs = append(attrs, "of them the backup had", hashes.Image.Kept())
		}
		p.log.Info("pre-copy round shipped", append(attrs, "took", p.now().Sub(start).Round(time.Millisecond), "harvest pause", stall.Round(time.Microsecond))...)
		if hashes != nil {
			hashes, ask = nil, false
			p.hashes.Set(nil) // later hashes of the series are dropped
		}
		// Not more: the pages (and blocks) left go in the pause, with
		// those dirtied since.
		pfns, blocks, more = plan.Next(dirty, pfns[:0], blocks[:0])
		if p.spoiled.Load() {
			// The backup dropped this sync: its commit, refused, starts
			// the next at once (handleResync). It still comes, so that
			// every sync on a connection has an epoch of its own, which
			// names its hashes.
			p.log.Warn("the backup dropped this sync; committing it now to start another", "round", round)
			more = false
		}
		p.syncPeak = max(p.syncPeak, len(pfns)) // dirtied during one round's shipping
	}
	p.prepareBuffer(len(pfns), 0)
	c, pause, err := p.captureEpoch(dirty, format.KindSyncCommit, false)
	if err != nil {
		return err
	}
	return p.commitSync(ctx, c, pause, captures, failed, began)
}

// stopAndCopy is a full sync without pre-copy (PrecopyRounds 0): one
// commit that carries every page (and block), copied with the guest
// paused.
func (p *Primary) stopAndCopy(ctx context.Context, dirty *machine.Bitmap, captures chan<- *capture, failed <-chan error, began time.Time) error {
	dirty.SetAll()
	if p.blocks != nil {
		p.blocks.MarkAll()
	}
	c, pause, err := p.captureEpoch(dirty, format.KindSyncCommit, false)
	if err != nil {
		return err
	}
	c.hdr.Flags |= format.FlagSyncStart
	return p.commitSync(ctx, c, pause, captures, failed, began)
}

// commitSync hands the sender a sync's commit, captured in pause.
func (p *Primary) commitSync(ctx context.Context, c *capture, pause Pause, captures chan<- *capture, failed <-chan error, began time.Time) error {
	p.committing = true // outputs from here on wait for the backup
	p.Stats.epoch(pause, p.cfg.Epoch)
	p.syncSent.Store(p.now().UnixNano())
	p.log.Info("full sync's commit captured", "epoch", c.hdr.Epoch, "pages in the pause", pause.Dirty,
		"pause", pause.Total().Round(time.Microsecond), "since the sync began", p.now().Sub(began).Round(time.Millisecond))
	return p.enqueue(ctx, captures, c, failed)
}

// sendRound hands the sender one pre-copy round over pfns and a mirrored
// disk's blocks, read live, in messages of at most roundChunk pages, then
// of at most blockChunk blocks, and waits until the backup has applied
// them all (MsgRounds). hashes is set for the sync's first round if the
// backup sends its image's hashes, its memory's: the blocks and pages of
// ranges it has go without their data (takeBlocks, takePages). ask says
// the sync asks for them: its first message, then, carries nothing but
// the question (FlagSendHashes), as the backup hashes only once it has
// that message.
func (p *Primary) sendRound(ctx context.Context, captures chan<- *capture, failed <-chan error, epoch uint64, pfns, blocks []uint64, hashes *session.Hashes, ask bool) error {
	var last *capture
	total, totalBlocks := len(pfns), len(blocks)
	start := p.roundsSent == 0
	var image *session.BackupImage
	var memory *session.BackupMemory
	if hashes != nil {
		image, memory = hashes.Image, hashes.Memory
	}
	if ask {
		last = &capture{hdr: format.Header{Kind: format.KindSyncRound, Flags: format.FlagSyncStart | format.FlagSendHashes, Generation: p.gen, Epoch: epoch},
			sent: make(chan struct{}), roundPages: total, roundBlocks: totalBlocks}
		if err := p.enqueue(ctx, captures, last, failed); err != nil {
			return err
		}
		p.roundsSent++
		start = false
	}
	for len(pfns) > 0 || len(blocks) > 0 || last == nil {
		c := &capture{hdr: format.Header{Kind: format.KindSyncRound, Generation: p.gen, Epoch: epoch},
			sent: make(chan struct{}), roundPages: total, roundBlocks: totalBlocks, cont: last != nil}
		if len(pfns) > 0 || len(blocks) == 0 {
			var err error
			if c.pfns, c.pages, c.keptPages, pfns, memory, err = p.takePages(ctx, failed, memory, pfns); err != nil {
				return err
			}
		} else {
			var err error
			if c.blocks, c.kept, blocks, image, err = p.takeBlocks(ctx, failed, image, blocks); err != nil {
				return err
			}
		}
		if start {
			c.hdr.Flags, start = format.FlagSyncStart, false
		}
		if err := p.enqueue(ctx, captures, c, failed); err != nil {
			return err
		}
		p.roundsSent++
		last = c
	}
	select {
	case <-last.sent:
	case <-ctx.Done():
		return ctx.Err()
	case err := <-failed:
		return fmt.Errorf("%w: %w", errPeerFailed, err)
	}
	// Written is not applied: the socket buffers hold many messages of
	// pages that compress well. Wait until the backup has applied them,
	// so that it is not far behind when the commit comes (the outputs
	// after it wait for its ack). A backup silent for FailureTimeout is
	// lost; one that applies nothing for as long (it rejected a round and
	// waits for the sync to end) is not waited for: the sync goes on, and
	// its commit, unacknowledged, starts another (loop).
	tick := time.NewTicker(p.cfg.Heartbeat)
	defer tick.Stop()
	progress := p.now()
	for applied := p.roundsApplied.Load(); applied < p.roundsSent && !p.spoiled.Load(); applied = p.roundsApplied.Load() {
		select {
		case <-p.roundsCh:
			progress = p.now()
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return fmt.Errorf("%w: %w", errPeerFailed, err)
		case <-tick.C:
			if err := p.checkSilence(p.link); err != nil {
				return err
			}
			if p.now().Sub(progress) > p.cfg.FailureTimeout {
				p.log.Warn("the backup applies no pre-copy round; going on without waiting", "applied", applied, "sent", p.roundsSent)
				return nil
			}
		}
	}
	return nil
}

// takeBlocks takes the next message's blocks from blocks, at most
// blockChunk, and with image (the backup's image hashes, on the first
// round) those of them the backup has, kept. It waits for the hashes as
// need be (awaitHashes): the image it returns, to use next, is nil once
// they stopped coming.
func (p *Primary) takeBlocks(ctx context.Context, failed <-chan error, image *session.BackupImage, blocks []uint64) (chunk, kept, rest []uint64, _ *session.BackupImage, err error) {
	for image != nil && len(blocks) > 0 {
		arrived := image.Arrived()
		n, kept, err := image.Compare(blocks[:min(len(blocks), blockChunk)], nil)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		p.syncing.kept.Add(int64(len(kept)))
		if n > 0 {
			return slices.Clone(blocks[:n]), kept, blocks[n:], image, nil
		}
		more, err := p.awaitHashes(ctx, failed, arrived, "the backup's image hashes stopped coming; copying the rest of the disk without comparing", len(blocks))
		if err != nil {
			return nil, nil, nil, nil, err
		}
		if !more {
			image = nil
		}
	}
	n := min(len(blocks), blockChunk)
	return slices.Clone(blocks[:n]), nil, blocks[n:], nil, nil
}

// takePages takes the next message's pages from pfns: with memory (the
// backup's memory hashes, on the first round) at most compareChunk of
// them, their contents read and compared (BackupMemory.Compare), and
// those the backup has, kept; without, at most roundChunk, to be read
// live by the sender (no contents). It waits for the hashes as need be
// (awaitHashes): the memory it returns, to use next, is nil once they
// stopped coming.
func (p *Primary) takePages(ctx context.Context, failed <-chan error, memory *session.BackupMemory, pfns []uint64) (chunk []uint64, pages []byte, kept, rest []uint64, _ *session.BackupMemory, err error) {
	for memory != nil && len(pfns) > 0 {
		arrived := memory.Arrived()
		k := min(len(pfns), compareChunk)
		n, pages, kept := memory.Compare(pfns[:k], p.buffers.take(k*format.PageSize), nil, p.guest.CopyLive)
		p.syncing.keptPages.Add(int64(len(kept)))
		if n > 0 {
			return slices.Clone(pfns[:n]), pages, kept, pfns[n:], memory, nil
		}
		p.buffers.recycle(pages)
		more, err := p.awaitHashes(ctx, failed, arrived, "the backup's memory hashes stopped coming; sending the rest of memory without comparing", len(pfns))
		if err != nil {
			return nil, nil, nil, nil, nil, err
		}
		if !more {
			memory = nil
		}
	}
	n := min(len(pfns), roundChunk)
	return slices.Clone(pfns[:n]), nil, nil, pfns[n:], nil, nil
}

// compareChunk is the most pages a pre-copy message carries when they
// are compared with the backup's (takePages): their contents travel in
// the capture, so a message holds a buffer of them.
const compareChunk = 1024

// awaitHashes waits for more of the backup's range hashes (arrived
// closes): it reports more once they come, or not more, saying so in the
// log with giveUp and left (what is left to send), if none come for
// FailureTimeout (the backup's disk is slow, or failing), or at once if
// the backup dropped the sync (spoiled: it may have refused the question).
// An error if ctx ends or the link fails.
func (p *Primary) awaitHashes(ctx context.Context, failed <-chan error, arrived <-chan struct{}, giveUp string, left int) (more bool, err error) {
	wait := time.NewTimer(p.cfg.FailureTimeout)
	defer wait.Stop()
	for !p.spoiled.Load() {
		select {
		case <-arrived:
			return true, nil
		case <-p.roundsCh: // handleResync's wake-up, or a round applied
		case <-wait.C:
			p.log.Warn(giveUp, "left", left)
			return false, nil
		case <-ctx.Done():
			return false, ctx.Err()
		case err := <-failed:
			return false, fmt.Errorf("%w: %w", errPeerFailed, err)
		}
	}
	return false, nil
}
