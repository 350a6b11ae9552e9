package checkpoint

import (
	"errors"
	"fmt"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// An epoch's pause: the guest stopped, what it dirtied harvested and copied
// (or protected to copy after the resume), its state captured, the guest
// resumed.

// captureEpoch pauses the guest, harvests and copies the dirty pages and the
// machine state, moves outputs on to the next epoch and resumes the guest.
// The pause lasts from Pause to Resume; it is returned, in its parts, for
// the statistics.
func (p *Primary) captureEpoch(dirty *machine.Bitmap, kind format.Kind, track bool) (*capture, Pause, error) {
	pause := Pause{At: p.now()}
	lap := pause.At
	split := func(d *time.Duration) {
		now := p.now()
		*d, lap = now.Sub(lap), now
	}
	pauseGuest := p.guest.Pause
	if g, ok := p.guest.(machine.PauseSaver); ok {
		pauseGuest = g.PauseSaving // the state is captured while pages are copied
	}
	if err := pauseGuest(); err != nil {
		return nil, pause, fmt.Errorf("pausing the guest: %w", err)
	}
	split(&pause.Stop)
	epoch := p.pos.Load()
	if kind != format.KindSyncCommit {
		dirty.Clear() // a sync's commit also carries the pages its last round left (sync)
	}
	if err := p.guest.Harvest(dirty); err != nil {
		return nil, pause, p.resumeAfter(fmt.Errorf("harvesting dirty pages: %w", err))
	}
	split(&pause.Harvest)
	c := &capture{hdr: format.Header{Kind: kind, Generation: p.gen, Epoch: epoch}}
	if h, ok := p.guest.(machine.OperatorHold); ok && h.Held() {
		c.hdr.Flags |= format.FlagHeld // a backup going live from it keeps it paused
	}
	p.copyPages(c, dirty)
	pause.Dirty, pause.Deferred = len(c.pfns), c.copied != nil
	if kind == format.KindSyncCommit && p.blocks != nil {
		if err := p.copyBlocks(c); err != nil {
			return nil, pause, p.resumeAfter(err)
		}
	}
	split(&pause.Copy)
	state, err := p.guest.SaveState()
	if err != nil {
		return nil, pause, p.resumeAfter(fmt.Errorf("saving machine state: %w", err))
	}
	c.machine = state
	if p.disk != nil {
		d := p.disk.Capture(epoch, kind == format.KindSyncCommit)
		c.disk = &d
	}
	if p.hasher != nil {
		if c.diskHashes, err = p.hasher.capture(); err != nil {
			return nil, pause, p.resumeAfter(err)
		}
	}
	p.pos.Store(epoch + 1)
	if track {
		p.mu.Lock()
		p.inflight[epoch] = true
		p.mu.Unlock()
	}
	split(&pause.State)
	if err := p.guest.Resume(); err != nil {
		return nil, pause, fmt.Errorf("resuming the guest: %w", err)
	}
	split(&pause.Resume)
	p.choice.observe(pause)
	return c, pause, nil
}

// prepareBuffer makes the coming pause's page buffer, while the guest
// runs, for known pages already harvested and those dirtied since: as
// many as the guest counts now where it can (machine.DirtyCounter), else
// guess (the last pause's count). Making a buffer takes time, in which the
// guest dirties more, so where it counts it counts again after, up to
// prepareRounds times. A guess is wrong when the dirty count jumps — the
// first epoch after a sync, whose pre-copy rounds ran slower than the
// guest then does — and a pause then makes its buffer: 3 ms for 1,026
// pages on this project's nested test host, 0.5 s for 32,770.
func (p *Primary) prepareBuffer(known, guess int) {
	dc, counts := p.guest.(machine.DirtyCounter)
	for range prepareRounds {
		if counts {
			n, err := dc.DirtySoFar()
			if counts = err == nil; counts {
				guess = n
			}
		}
		if !p.buffers.prepare(known+guess) || !counts {
			return
		}
	}
}

// prepareRounds bounds prepareBuffer's counts: the count a buffer was
// made for grows while it is made (memtouch: 19,472 pages counted, 32,770
// by the pause), and stops growing as the guest's working set fills.
const prepareRounds = 3

// copyPages lists the dirty pages in c.pfns and copies them into c.pages:
// during the pause, or, where the machine can and p.choice finds it pays,
// after it (c.copied waits for the copy).
// Precondition: the guest is paused.
func (p *Primary) copyPages(c *capture, dirty *machine.Bitmap) {
	n, runs := dirty.Count(), 0
	c.pfns = make([]uint64, 0, n)
	for r := range dirty.Runs() {
		for q := r.First; q < r.First+r.Count; q++ {
			c.pfns = append(c.pfns, q)
		}
		runs++
	}
	c.pages = p.buffers.take(n * format.PageSize)
	if cw, ok := p.guest.(machine.CopyOnWriter); ok && p.cfg.CopyAfterResume != CopyNever && p.choice.choose(n, runs) {
		wait, err := cw.CopyOnWrite(c.pfns, c.pages[:n*format.PageSize])
		if err == nil {
			c.pages, c.copied = c.pages[:n*format.PageSize], wait
			return
		}
		p.choice.off = true
		p.log.Warn("pages cannot be copied after the guest resumes; every pause copies them", "err", err)
	}
	mem := p.guest.Memory()
	for r := range dirty.Runs() {
		// In chunks: a copy of a long run would hold up the whole process
		// for a GC's stop-the-world.
		c.pages = format.AppendChunked(c.pages, mem[r.First*format.PageSize:(r.First+r.Count)*format.PageSize])
	}
}

// copyBlocks takes a mirrored disk's dirty blocks into c and copies them,
// as the guest sees them, while the guest is paused (a sync's commit).
func (p *Primary) copyBlocks(c *capture) error {
	c.blocks = p.blocks.Take(nil)
	c.blockData = make([]byte, len(c.blocks)*format.DiskBlockSize)
	for i, b := range c.blocks {
		if err := p.readBlock(c.blockData[i*format.DiskBlockSize:(i+1)*format.DiskBlockSize], b); err != nil {
			return err
		}
	}
	return nil
}

// readBlock reads block b of the disk as the guest sees it (held writes
// over the disk) into dst (DiskBlockSize bytes; a shorter last block fills
// its start).
func (p *Primary) readBlock(dst []byte, b uint64) error {
	off := int64(b) * format.DiskBlockSize
	n := min(int64(len(dst)), p.disk.Size()-off)
	if _, err := p.disk.ReadAt(dst[:n], off); err != nil {
		return fmt.Errorf("reading disk block %d for the backup's image: %w", b, err)
	}
	return nil
}

// harvestWhilePaused pauses the guest just long enough to harvest its dirty
// pages into dirty (cleared first), for a pre-copy round, and returns how
// long the guest was paused.
func (p *Primary) harvestWhilePaused(dirty *machine.Bitmap) (time.Duration, error) {
	start := p.now()
	if err := p.guest.Pause(); err != nil {
		return 0, fmt.Errorf("pausing the guest: %w", err)
	}
	dirty.Clear()
	if err := p.guest.Harvest(dirty); err != nil {
		return 0, p.resumeAfter(fmt.Errorf("harvesting dirty pages: %w", err))
	}
	if err := p.guest.Resume(); err != nil {
		return 0, fmt.Errorf("resuming the guest: %w", err)
	}
	return p.now().Sub(start), nil
}

// resumeAfter resumes the paused guest after a failed step and returns the
// step's error, with the resume's if that failed too (the guest then stays
// paused: the caller's error ends the primary).
func (p *Primary) resumeAfter(err error) error {
	if rerr := p.guest.Resume(); rerr != nil {
		return errors.Join(err, fmt.Errorf("resuming the guest: %w", rerr))
	}
	return err
}
