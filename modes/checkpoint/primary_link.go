package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The primary's side of the link: the sender, which encodes and ships each
// capture, and the receiver of the backup's acks, resync requests and
// hashes.

// send encodes captures in order and writes them to the backup.
func (p *Primary) send(ctx context.Context, l *format.Link, enc *format.Encoder, captures <-chan *capture, failed chan<- error) {
	var buf []byte
	scratch := make([]byte, format.PageSize)
	var scratchBlock []byte
	if p.blocks != nil {
		scratchBlock = make([]byte, format.DiskBlockSize)
	}
	for c := range captures {
		if c.copied != nil {
			waited, err := c.copied()
			if err != nil {
				failed <- fmt.Errorf("copying the pages of %v after the guest resumed: %w", c.hdr, err)
				return
			}
			p.Stats.waited(waited)
		}
		if n := encodeBound(c); cap(buf) < n {
			buf = make([]byte, 0, n)
		}
		if err := enc.Begin(buf[:0], c.hdr); err != nil {
			failed <- fmt.Errorf("encoding %v: %w", c.hdr, err)
			return
		}
		if !c.cont { // a round's later messages go on with it
			p.syncing.begin(c.hdr, max(len(c.pfns), c.roundPages), max(len(c.blocks), c.roundBlocks), p.now())
		}
		kept := c.keptPages
		for i, pfn := range c.pfns {
			var page []byte
			if c.pages != nil {
				page = c.pages[i*format.PageSize : (i+1)*format.PageSize]
			} else {
				// A live read while the guest runs: the encoder needs a
				// page that holds still, and a torn copy is sent again
				// because the write that tore it is in the dirty log.
				p.guest.CopyLive(scratch, pfn)
				page = scratch
			}
			add := enc.AddPage
			if len(kept) > 0 && kept[0] == pfn {
				kept, add = kept[1:], enc.AddKeptPage
			}
			if err := add(pfn, page); err != nil {
				enc.Abort()
				failed <- fmt.Errorf("encoding page %d of %v: %w", pfn, c.hdr, err)
				return
			}
			p.syncing.page()
		}
		if err := p.addBlocks(enc, c, scratchBlock); err != nil {
			enc.Abort()
			failed <- err
			return
		}
		if c.diskHashes != nil {
			if err := enc.SetDiskHashes(p.disk.Size(), c.diskHashes); err != nil {
				enc.Abort()
				failed <- fmt.Errorf("encoding %v: %w", c.hdr, err)
				return
			}
		}
		if c.disk != nil {
			if err := enc.SetDiskLog(*c.disk); err != nil {
				enc.Abort()
				failed <- fmt.Errorf("encoding %v: %w", c.hdr, err)
				return
			}
		}
		data, err := enc.Finish(c.machine, p.cfg.Verify && c.machine != nil)
		if err != nil {
			failed <- fmt.Errorf("encoding %v: %w", c.hdr, err)
			return
		}
		p.buffers.recycle(c.pages) // encoded: the pages are in data and the encoder's cache
		if r, ok := p.guest.(machine.StateRecycler); ok && c.machine != nil {
			r.RecycleState(c.machine) // encoded into data too
			c.machine = nil
		}
		buf = data
		if err := l.Send(format.MsgCheckpoint, data, p.cfg.FailureTimeout); err != nil {
			failed <- err
			return
		}
		p.Stats.shipped(uint64(len(data)), uint64(len(c.pfns))*format.PageSize)
		p.syncing.sent(c.hdr, len(data))
		if c.sent != nil {
			close(c.sent)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// encodeBound is room enough for c encoded but for a disk log and disk
// hashes of more than encodeSlack: a page or a disk block takes at most
// its size and 32 bytes (its gap, its encoding, a payload's length). The
// sender makes its buffer that large before encoding, so that no append of
// the encoder grows it: growing copies all encoded so far in one move that
// cannot be preempted, which a GC stop-the-world then waits for, with
// every goroutine (see format.AppendChunked) — 64 MiB pre-copy rounds of
// incompressible memory grew it by copies of 32 MiB.
func encodeBound(c *capture) int {
	return len(c.pfns)*(format.PageSize+32) + len(c.blocks)*(format.DiskBlockSize+32) + len(c.machine) + encodeSlack
}

// encodeSlack is encodeBound's room for the rest: headers, sections, a
// disk log, disk hashes.
const encodeSlack = 1 << 20

// addBlocks adds c's disk blocks to the checkpoint begun: copied in the
// pause, or read now while the guest runs (a torn read is sent again: the
// write that tore it marked the block), or, those in c.kept, as KEPT.
func (p *Primary) addBlocks(enc *format.Encoder, c *capture, scratch []byte) error {
	kept := c.kept
	for i, b := range c.blocks {
		if len(kept) > 0 && kept[0] == b {
			kept = kept[1:]
			if err := enc.AddKeptDiskBlock(b); err != nil {
				return fmt.Errorf("encoding disk block %d of %v as the backup's: %w", b, c.hdr, err)
			}
			p.syncing.block()
			continue
		}
		block := scratch
		if c.blockData != nil {
			block = c.blockData[i*format.DiskBlockSize : (i+1)*format.DiskBlockSize]
		} else if err := p.readBlock(block, b); err != nil {
			return err
		}
		n := min(int64(format.DiskBlockSize), p.disk.Size()-int64(b)*format.DiskBlockSize)
		if err := enc.AddDiskBlock(b, block[:n]); err != nil {
			return fmt.Errorf("encoding disk block %d of %v: %w", b, c.hdr, err)
		}
		p.syncing.block()
	}
	return nil
}

// receive reads the backup's acks, resync requests, sync rounds applied,
// image hashes and memory hashes (into hashes, if of its series) until the
// link fails, and reports why on failed.
func (p *Primary) receive(l *format.Link, failed chan<- error) {
	from := format.FromBackup{Ack: p.handleAck, Resync: p.handleResync, Rounds: p.handleRounds, ImageHashes: p.handleImageHashes}
	if p.askMemory {
		from.MemoryHashes = p.handleMemoryHashes
	}
	failed <- l.ReceiveFromBackup(from)
}

// handleImageHashes adds the backup's image hashes to those the sync
// under way compares with, if they are of its series; it drops others (a
// series the backup halted, or one whose sync's first round is over).
// Called by the receiver.
func (p *Primary) handleImageHashes(h format.ImageHashes) error {
	if !p.askImage {
		return errors.New("the backup sent its image's hashes unasked")
	}
	return p.hashes.AddImage(h)
}

// handleMemoryHashes is handleImageHashes for the backup's memory hashes.
func (p *Primary) handleMemoryHashes(h format.MemoryHashes) error {
	return p.hashes.AddMemory(h)
}

// newBackupHashes makes what the primary will know of series f of the
// backup's hashes: its image's if the Hellos agreed on them, its memory's
// if they did and withMemory (a Hello's series only if the backup offered
// it). nil if neither.
func (p *Primary) newBackupHashes(f format.HashesFor, withMemory bool) *session.Hashes {
	h := &session.Hashes{For: f}
	if p.askImage {
		h.Image = session.NewBackupImage(p.disk, p.disk.Size())
	}
	if p.askMemory && withMemory {
		h.Memory = session.NewBackupMemory(uint64(len(p.guest.Memory())) / format.PageSize)
	}
	if h.Image == nil && h.Memory == nil {
		return nil
	}
	return h
}

// handleAck releases what the backup's ack of a.Epoch covers, unless it
// acks another generation's state. Called by the receiver.
func (p *Primary) handleAck(a format.Ack) error {
	if a.Generation != p.gen {
		return nil // an ack of another generation's state releases nothing
	}
	if a.Epoch >= p.syncEpoch.Load() && !p.syncAcked.Swap(true) {
		p.log.Info("full sync acknowledged: the outputs held since its commit leave", "epoch", a.Epoch,
			"held for", p.now().Sub(time.Unix(0, p.syncSent.Load())).Round(time.Microsecond))
	}
	p.mu.Lock()
	for e := range p.inflight {
		if e <= a.Epoch {
			delete(p.inflight, e)
		}
	}
	p.mu.Unlock()
	select {
	case p.acked <- struct{}{}:
	default:
	}
	p.Stats.acked(a.Epoch)
	if err := p.commitAcked(a.Epoch); err != nil {
		return fmt.Errorf("releasing outputs of epoch %d: %w", a.Epoch, err)
	}
	return nil
}

// handleResync makes the next checkpoint a full sync, unless one is under
// way (not acknowledged yet): the backup gets that one, unless it rejected
// a message of it (r.Rejected names it). It then drops that sync (its
// handleCheckpoint): a rejected round marks the sync spoiled, so that the
// pre-copy goes to its commit, and the rejected commit starts the next
// sync at once, not after FailureTimeout (checkSyncAcked, which stays
// for a commit lost on the way). Called by the receiver.
func (p *Primary) handleResync(r format.Resync) {
	if !p.syncAcked.Load() {
		// Moot, unless it names a message of the sync under way: a round
		// makes the backup drop the sync (the rest is refused), and the
		// refused commit asks for the next at once.
		rejected := r.Rejected
		if rejected.Generation != p.gen || rejected.Epoch != p.syncEpoch.Load() || rejected.Kind == format.KindEpoch {
			return
		}
		if rejected.Kind == format.KindSyncRound {
			p.spoiled.Store(true)
			select {
			case p.roundsCh <- struct{}{}: // wake a pre-copy waiting for it
			default:
			}
			return
		}
	}
	p.log.Warn("backup asks for a full sync", "reason", r.Reason, "detail", r.Detail, "committed", r.Epoch)
	p.Stats.resynced()
	p.syncAcked.Store(false) // one request is enough
	p.resync.Store(true)
	select {
	case p.acked <- struct{}{}: // wake a loop waiting for acks that will not come
	default:
	}
}

// handleRounds notes how many rounds of the sync under way the backup
// applied (a count for another sync is stale), by which sendRound paces
// the pre-copy. Called by the receiver.
func (p *Primary) handleRounds(r format.Rounds) {
	if r.Generation == p.gen && r.Epoch == p.syncEpoch.Load() {
		p.roundsApplied.Store(r.Count)
		select {
		case p.roundsCh <- struct{}{}:
		default:
		}
	}
}
