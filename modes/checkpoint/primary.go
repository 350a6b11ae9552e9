package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/machine"
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
