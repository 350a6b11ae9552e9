package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/vmm/machine"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/witness"
)

// ErrBackupLost is returned (wrapped) by Primary.Run when the backup stopped
// answering and the primary won the next generation: the guest runs on,
// unprotected, and its outputs are released at once.
var ErrBackupLost = errors.New("backup lost; continuing alone")

// Primary replicates a running guest to a backup.
type Primary struct {
	cfg   Config
	guest machine.Runner
	out   *outbuf.Buffer
	fence *witness.Fence
	gen   uint64
	log   *slog.Logger
	now   func() time.Time
	// Stats is updated as epochs pass; read it for the status line.
	Stats *Stats
	// disk, if set, is the guest's held disk; its writes ride in the
	// checkpoints. Set before Run. blocks, if set (MirrorDisk), is its
	// dirty-block log: the backup keeps its own image, which full syncs
	// copy.
	disk   *HeldDisk
	blocks *dirtylog.Blocks
	// hasher, with --verify and a mirrored disk, hashes its ranges for
	// each committing checkpoint.
	hasher *diskHasher
	// hashes holds the range hashes of the backup's image and memory that
	// the sync under way compares with the disk and the guest's memory in
	// its first round, to send what the backup has as KEPT, without its
	// data (session/hashes.go); none when no sync compares. run sets it to the
	// series the Hello asked for, sync to the one its first message asks
	// for; the receiver adds to it the hashes of its series.
	// askImage and askMemory say what this connection's Hellos agreed a
	// sync may ask for (set by run before the receiver starts);
	// syncsBegun counts its syncs (run's goroutine only).
	hashes              session.CurrentHashes
	askImage, askMemory bool
	syncsBegun          int
	// spoiled is set by the receiver when the backup rejects a message of
	// the sync under way, which it then drops (Backup.handleCheckpoint):
	// the pre-copy stops waiting for rounds it will not apply and goes to
	// the commit, whose rejection starts the next sync.
	spoiled atomic.Bool

	// pos is the epoch whose outputs the guest produces now; devices read
	// it when they hold an output.
	pos atomic.Uint64
	// replicating is true while run replicates to a backup (Protected).
	replicating atomic.Bool
	// setting, if set, replaces cfg's epoch policy (SetEpoch).
	setting atomic.Pointer[epochSetting]
	// detachMu protects detach and detached. detach takes Detach's
	// request to the epoch loop of the run under way (room for one; nil
	// while none runs). detached, once set, stops acks releasing outputs
	// for the rest of that run (commitAcked): the contest suspends the
	// fence, and a release it refused would fail the output buffer.
	detachMu sync.Mutex
	detach   chan struct{}
	detached bool
	// syncing follows the full sync under way, on the sender (progress.go).
	syncing syncTracker
	// resync is set by the receiver when the backup asks for a full sync.
	resync atomic.Bool
	// syncEpoch is the epoch the latest full sync commits, syncAcked
	// whether the backup has acknowledged it, and syncSent when its commit
	// was queued (UnixNano). A resync request is honoured only after the
	// latest sync was acknowledged: requests about checkpoints sent before
	// it (which the backup rejects while it waits for the sync) arrive
	// before its ack and are moot. If the sync itself is lost, no ack comes,
	// and the epoch loop starts another after FailureTimeout.
	syncEpoch atomic.Uint64
	syncAcked atomic.Bool
	syncSent  atomic.Int64
	// inflight counts captured epochs not yet acknowledged; acked wakes the
	// epoch loop when it drops.
	mu       sync.Mutex
	inflight map[uint64]bool
	acked    chan struct{}
	// roundsApplied is the count of the sync's round messages the backup
	// said it applied (MsgRounds), roundsSent those sent; roundsCh wakes
	// sendRound when roundsApplied moves. roundsSent and link belong to
	// the epoch loop's goroutine; link is the run's.
	roundsApplied atomic.Uint64
	roundsSent    uint64
	roundsCh      chan struct{}
	link          *format.Link
	// committing is false while a joining backup's sync has not yet
	// captured its commit: until then the guest's outputs leave at once
	// and losing the backup costs nothing. Only the epoch loop's goroutine
	// (run) touches it.
	committing bool
	// buffers holds the captures' page buffers. syncPeak is the most
	// pages a pre-copy round after the first found dirty in the last sync:
	// the first epochs' likely count; only the epoch loop's goroutine
	// touches it.
	buffers  pageBuffers
	syncPeak int
	// choice decides where each epoch's pages are copied. Only the epoch
	// loop's goroutine touches it.
	choice copyChoice
}

// NewPrimary prepares a primary for generation gen (already won through
// fence). out holds the guest's outputs; its devices must hold them at
// Position().
func NewPrimary(cfg Config, g machine.Runner, out *outbuf.Buffer, fence *witness.Fence, gen uint64, log *slog.Logger) (*Primary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Primary{cfg: cfg, guest: g, out: out, fence: fence, gen: gen, log: log, now: time.Now,
		inflight: map[uint64]bool{}, acked: make(chan struct{}, 1), buffers: newPageBuffers(cfg.MaxInFlight + 1),
		choice: copyChoice{eligible: deferPays, learn: cfg.CopyAfterResume == CopyAuto}}
	p.Stats = newStats(p.now())
	p.pos.Store(1)
	return p, nil
}

// SetDisk makes every committing checkpoint carry the disk log of d, the
// guest's disk, so that a backup going live can write again what the disk
// may lack (see HeldDisk). d must hold its writes in this primary's output
// buffer at Position. Call before Run.
func (p *Primary) SetDisk(d *HeldDisk) { p.disk = d }

// MirrorDisk says the backup keeps its own image of the disk given to
// SetDisk (--disk-mode mirrored): each full sync copies the disk to it by
// the blocks the guest writes, as memory is copied by the pages, and the
// backup writes each committed epoch's disk writes to it. Call after
// SetDisk, before Run.
// With --verify each committing checkpoint also carries hashes of some
// ranges of the disk (diskverify.go).
func (p *Primary) MirrorDisk() {
	p.blocks = p.disk.TrackBlocks(format.DiskBlockSize)
	if p.cfg.Verify {
		p.hasher = newDiskHasher(p.disk)
	}
}

// Position is the epoch the guest's current outputs belong to: they are
// released when the backup acknowledges that epoch.
func (p *Primary) Position() uint64 { return p.pos.Load() }

// capture is one epoch's copy, taken while the guest was paused, on its way
// to the sender.
type capture struct {
	hdr   format.Header
	pfns  []uint64
	pages []byte // page i of pfns at pages[i*PageSize:]; nil: read guest memory live
	// keptPages are those of pfns the backup's memory has (BackupMemory),
	// to carry as KEPT records, in the same order, with their contents in
	// pages as the primary compared them.
	keptPages []uint64
	// copied, if set, waits until pages holds all the pages (copied after
	// the guest resumed: machine.CopyOnWriter) and says how many of the
	// guest's writes waited for their copy.
	copied func() (waited uint64, err error)
	// blocks are a mirrored disk's blocks for a sync message, block i of
	// them at blockData[i*DiskBlockSize:] (nil: read the disk live); kept
	// are those of them the backup's image has (BackupImage), to carry as
	// KEPT records, in the same order.
	blocks    []uint64
	blockData []byte
	kept      []uint64
	machine   []byte
	disk      *format.DiskLog // committing kinds with a held disk
	// diskHashes (--verify, a mirrored disk) are hashes of disk ranges.
	diskHashes []format.DiskRangeHash
	// sent, if set, is closed by the sender once the capture is written
	// to the link (a pre-copy round waits for it before harvesting the
	// next).
	sent chan struct{}
	// roundPages and roundBlocks, on the first message of a pre-copy round
	// sent in several (sendRound), are the round's pages and disk blocks;
	// cont marks the others.
	roundPages, roundBlocks int
	cont                    bool
}

// Run replicates the guest over conn until ctx ends, the guest stops (nil),
// or the backup is lost. On losing the backup it applies the paper's rule:
// with the next generation won it returns an error wrapping ErrBackupLost
// and the guest runs on; otherwise it pauses the guest and returns an error
// wrapping witness.ErrHalt.
// Precondition: the guest is running.
func (p *Primary) Run(ctx context.Context, conn net.Conn) error {
	return p.run(ctx, conn, false)
}

// run is Run; joining says the guest runs alone, its outputs released at
// once (goAlone), and conn's backup joins it: a backup lost before the
// sync's commit was captured is dropped (errJoinDropped, see backupLost)
// without asking the witness, as it never protected the guest.
// Precondition: no other run of p is under way.
func (p *Primary) run(ctx context.Context, conn net.Conn, joining bool) error {
	l := format.NewLink(conn, p.cfg.MaxCheckpoint, p.now)
	defer conn.Close()
	p.syncAcked.Store(false) // the last run's: this backup has none yet
	p.replicating.Store(true)
	defer p.replicating.Store(false)
	detach := p.openDetach()
	defer p.closeDetach()
	if g, _ := p.fence.Held(); g > p.gen {
		p.gen = g // won since NewPrimary, losing an earlier backup
	}
	p.resync.Store(false)
	p.committing = !joining
	p.link, p.roundsCh = l, make(chan struct{}, 1)
	pages := uint64(len(p.guest.Memory())) / format.PageSize
	cache, err := format.NewPageCache(len(p.guest.Memory()))
	if err != nil {
		return err
	}
	p.askImage = p.blocks != nil && p.cfg.PrecopyRounds > 0
	p.askMemory = p.cfg.PrecopyRounds > 0
	p.syncsBegun = 0
	hello := format.Hello{Role: format.RolePrimary, MemPages: pages, Machine: p.cfg.Machine,
		WantImageHashes: p.askImage, WantMemoryHashes: p.askMemory}
	peer, err := l.Hello(hello, p.cfg.FailureTimeout)
	if err != nil {
		return p.backupLost(ctx, err)
	}
	p.hashes.Set(p.newBackupHashes(format.HelloHashes, peer.SendsMemoryHashes))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	failed := make(chan error, 4)
	captures := make(chan *capture, p.cfg.MaxInFlight)
	stopHB := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(3)
	enc := format.NewEncoder(cache)
	if p.blocks != nil {
		if err := enc.SetDiskSize(p.disk.Size()); err != nil {
			return err
		}
	}
	go func() { defer wg.Done(); p.send(ctx, l, enc, captures, failed) }()
	go func() { defer wg.Done(); p.receive(l, failed) }()
	go func() {
		defer wg.Done()
		l.Heartbeats(p.cfg.Heartbeat, p.cfg.FailureTimeout, stopHB, func(err error) { failed <- err })
	}()
	defer func() {
		close(stopHB)
		cancel()
		conn.Close()
		wg.Wait()
	}()
	watchdog := time.NewTicker(p.cfg.Heartbeat)
	defer watchdog.Stop()

	err = p.loop(ctx, l, pages, captures, failed, watchdog.C, detach)
	close(captures)
	if errors.Is(err, errPeerFailed) || errors.Is(err, ErrDetached) {
		return p.backupLost(ctx, err)
	}
	return err
}

// errPeerFailed marks a loop exit caused by the link.
var errPeerFailed = errors.New("backup link failed")

// loop is the epoch loop: the initial sync, then one checkpoint per epoch.
func (p *Primary) loop(ctx context.Context, l *format.Link, pages uint64, captures chan<- *capture, failed <-chan error, tick <-chan time.Time, detach <-chan struct{}) error {
	dirty := machine.NewBitmap(pages)
	epochLen := p.cfg.Epoch
	timer := time.NewTimer(0)
	defer timer.Stop()
	needSync := true
	expect := 0 // dirty pages the next epoch will likely capture
	for {
		if needSync || p.resync.Swap(false) {
			needSync = false
			if err := p.sync(ctx, dirty, captures, failed); err != nil {
				return err
			}
			expect = p.syncPeak
			timer.Reset(epochLen)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.guest.Stopped():
			return nil
		case err := <-failed:
			return fmt.Errorf("%w: %w", errPeerFailed, err)
		case <-detach:
			p.markDetached()
			return ErrDetached
		case <-tick:
			if err := p.checkSilence(l); err != nil {
				return err
			}
			p.checkSyncAcked()
			continue
		case <-timer.C:
		}
		if err := p.waitInflight(ctx, l, failed, tick); err != nil {
			return err
		}
		if p.resync.Load() {
			continue // the epochs in flight are moot; sync instead
		}
		p.prepareBuffer(0, expect)
		c, pause, err := p.captureEpoch(dirty, format.KindEpoch, true)
		if err != nil {
			return err
		}
		expect = pause.Dirty
		epochLen = p.policy().nextEpoch(epochLen, uint64(pause.Dirty), pages)
		p.Stats.epoch(pause, epochLen)
		captures <- c
		timer.Reset(epochLen)
	}
}

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

func (p *Primary) enqueue(ctx context.Context, captures chan<- *capture, c *capture, failed <-chan error) error {
	select {
	case captures <- c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case err := <-failed:
		return fmt.Errorf("%w: %w", errPeerFailed, err)
	}
}

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

// waitInflight waits until fewer than MaxInFlight epochs await their ack,
// or a full sync is due (the acks awaited will then never come): the
// backup asked for one, or the last went unacknowledged (checkSyncAcked:
// a backup that rejected it, whose request the primary took as moot). The
// guest runs on meanwhile; its outputs wait in the buffer. A backup silent
// for FailureTimeout is lost here too: a link that goes dark fails no read
// or write for a long while (the kernel's buffers take the writes), and
// the acks awaited never come.
func (p *Primary) waitInflight(ctx context.Context, l *format.Link, failed <-chan error, tick <-chan time.Time) error {
	for {
		p.mu.Lock()
		n := len(p.inflight)
		p.mu.Unlock()
		if n < p.cfg.MaxInFlight || p.resync.Load() {
			return nil
		}
		select {
		case <-p.acked:
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return fmt.Errorf("%w: %w", errPeerFailed, err)
		case <-tick:
			if err := p.checkSilence(l); err != nil {
				return err
			}
			p.checkSyncAcked()
		}
	}
}

// checkSyncAcked asks for another full sync if the last one has gone
// unacknowledged for FailureTimeout: the backup rejected it, and asked for
// one while the primary took such requests as moot (handleResync).
func (p *Primary) checkSyncAcked() {
	if !p.syncAcked.Load() && p.now().Sub(time.Unix(0, p.syncSent.Load())) > p.cfg.FailureTimeout && !p.resync.Load() {
		p.log.Warn("full sync not acknowledged; starting another", "epoch", p.syncEpoch.Load())
		p.resync.Store(true)
	}
}

// checkSilence says the backup is lost if it has been silent (no ack, no
// heartbeat) for FailureTimeout.
func (p *Primary) checkSilence(l *format.Link) error {
	if s := l.SilentFor(); s > p.cfg.FailureTimeout {
		return fmt.Errorf("%w: nothing from the backup for %v", errPeerFailed, s.Round(time.Millisecond))
	}
	return nil
}

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

// backupLost applies the paper's rule for a primary without its backup,
// unless the backup was still joining (!committing): it is then dropped,
// as nothing of the guest's was held for it.
func (p *Primary) backupLost(ctx context.Context, cause error) error {
	if !p.committing {
		p.log.Warn("the joining backup was lost before its sync committed; running on alone", "cause", cause)
		return fmt.Errorf("%w: %w", errJoinDropped, cause)
	}
	p.log.Warn("backup lost", "cause", cause)
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DecideTimeout)
	defer cancel()
	if err := witness.PrimaryLostBackup(dctx, p.fence); err != nil {
		err = fmt.Errorf("backup lost (%v), and %w", cause, err)
		if perr := p.guest.Pause(); perr != nil {
			err = errors.Join(err, fmt.Errorf("stopping the guest: %w", perr))
		}
		return err
	}
	gen, _ := p.fence.Held()
	p.log.Warn("won the next generation: continuing alone, unprotected", "generation", gen)
	if err := p.goAlone(); err != nil {
		return err
	}
	return fmt.Errorf("%w (generation %d): %w", ErrBackupLost, gen, cause)
}
