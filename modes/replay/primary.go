package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
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

// ErrBackupLost is what the primary logs (and Stats.BackupsLost counts)
// when its backup stopped answering and it won the next generation: the
// guest runs on, unprotected, and its outputs are released at once.
var ErrBackupLost = errors.New("backup lost; continuing alone")

// Primary runs a guest and records its execution into the replay log
// shipped to a backup (or, without one, just runs it).
//
// One goroutine — the caller of Run, the engine — drives the Machine and
// owns the log writer and every field marked "engine". The sender writes
// batches and checkpoints in order, the receiver reads acks and resync
// requests, and a heartbeat goroutine and a watchdog watch the link.
type Primary struct {
	cfg   Config
	m     machine.Stepper
	out   *outbuf.Buffer
	fence *witness.Fence
	// gen is the generation this primary holds: it rises when the primary
	// wins the next one after losing its backup. Written by the engine.
	gen atomic.Uint64
	log *slog.Logger
	// Stats counts what the primary did; safe to read at any time.
	Stats *Stats
	// Console receives the guest's serial output (nil: discarded). Set
	// before Run.
	Console io.Writer
	// SyncDisk, if set, makes the disk's released writes durable
	// (fdatasync). The primary tells the backup that outputs including
	// disk writes were released only once SyncDisk covered them, so that a
	// backup taking over re-issues every write a dying host may not have
	// made durable. It is called off the engine (see syncer), so the guest
	// runs on meanwhile, and may be called from two goroutines at once.
	// Set before Run.
	SyncDisk func() error
	// blocks, if set (MirrorDisk), logs the disk blocks the guest writes:
	// full checkpoints copy the disk, diskSize bytes, to the backup's own
	// image by it.
	blocks   *dirtylog.Blocks
	diskSize int64

	rx     rxQueue
	wake   chan struct{} // buffered(1): frames arrived, resync asked, link lost, a backup attaching
	attach chan net.Conn // buffered(1): a backup to protect the guest from now on
	// detach is buffered(1): Detach's request, answered on its channel.
	detach chan chan<- error
	// rxKick kicks the guest LandingDelay after a frame arrived, if no
	// synchronous exit delivered it first; rxKickArmed says it is set.
	rxKick      *time.Timer
	rxKickArmed atomic.Bool

	// Engine.
	ctx      context.Context
	clock    guestClock
	w        BatchWriter
	lsn      uint64    // LSN of the last entry appended
	batchAt  time.Time // when the open batch got its first entry
	released uint64    // the last EntryReleased appended
	// loggedHeld is what the last EntryHeld said (false from each sync);
	// holdLSN is its LSN (HoldLSN).
	loggedHeld bool
	holdLSN    atomic.Uint64
	// lastWrite is the LSN of the latest disk write held.
	lastWrite uint64
	recording bool // false when alone or pre-copying: nothing is logged
	// stopAndCopy asks for a full checkpoint with the guest stopped (sync)
	// at the next boundary: a backup's first, before the guest has run, or
	// after the backup refused a pre-copy round.
	stopAndCopy bool
	// protected mirrors recording for Attach, on other goroutines.
	protected atomic.Bool
	enc       *format.Encoder // made by the first sync: a primary alone needs none
	precopy   *precopy        // a full checkpoint being pre-copied: a backup attaches, or asked for one
	// precopying mirrors precopy != nil for Precopying, on other goroutines.
	precopying atomic.Bool
	// startImage receives the image hashes of a backup that connected with
	// Run (a mirrored disk), for its first full checkpoint (startKept); the
	// link's end (disconnect) drops it.
	startImage *session.BackupImage
	// hashes is the series of the backup's range hashes the pre-copy under
	// way compares with in its first pass (the Hello's, for a backup
	// attaching; its own, for a resync), for the receiver to add to; none
	// otherwise.
	hashes    session.CurrentHashes
	kickTimer *time.Timer
	// unlogged says the guest stopped at a kick that the log does not
	// name: the backup's guest will never stop there, so nothing may reach
	// the guest there (boundary) until logStop names it as a landing.
	// needMark says the guest's point is one the backup starts from (a
	// logged stop, or a sync's checkpoint): the next run starts a new
	// signature interval (Mark), as the backup's does.
	unlogged, needMark bool
	// atWindow says the guest stopped at an interrupt-window exit of a
	// WindowAsker machine: an asynchronous stop, as a kick's, at which the
	// pending interrupt goes in.
	atWindow bool

	// The link, while recording or pre-copying to a backup attaching.
	// linkCtx ends, with the failure as its cause, when the link fails (or
	// Run's ctx ends); failed is closed, and broken set, only when it fails.
	sendq      chan message
	stopLink   func() // stops the link's goroutines; nil without a link
	linkCtx    context.Context
	cancelLink context.CancelCauseFunc
	broken     atomic.Bool
	failed     chan struct{}

	committed atomic.Uint64 // highest LSN the backup acknowledged
	// ackMu serialises the receiver's applying of an ack (applyAck) with
	// the link's closing, which sets acksOff: from then on acks release
	// nothing (see stopLink).
	ackMu   sync.Mutex
	acksOff bool
	// durable is the LSN through which released disk writes are known
	// durable (a SyncDisk returned after they were released). The engine
	// asks the syncer to advance it to syncWant through syncKick (buffered
	// 1); syncErr is the SyncDisk failure that stops the primary.
	durable, syncWant atomic.Uint64
	syncKick          chan struct{}
	syncErr           atomic.Pointer[error]

	// roundsApplied is what the backup says it applied of the pre-copy in
	// progress (MsgRounds).
	roundsApplied atomic.Uint64

	ackedCh chan struct{} // buffered(1): committed rose, or the backup asked for a full sync (awaitAcks)
	// resync says the backup asked for a full sync: resyncAsked, with
	// resyncAfterGap if it asked after a gap in the log (see
	// resyncWhileRunning).
	resync atomic.Uint32
	// lastSync is the LSN of the latest EntrySync, or of the one the
	// pre-copy in progress will append.
	lastSync atomic.Uint64
}

// Primary.resync's bits.
const (
	resyncAsked    = 1 << iota // the backup asked for a full sync
	resyncAfterGap             // ... at least once after a gap in the log
)

// message is one framed message on its way to the sender.
type message struct {
	t       format.MsgType
	payload []byte
}

// MirrorDisk says the backup keeps its own image of the guest's disk, of
// size bytes (--disk-mode mirrored): every full checkpoint also copies the
// disk, as the guest sees it, by the blocks the guest writes (all of them
// on a stop-and-copy sync; the rest in the commit after pre-copy rounds).
// Call before Run.
func (p *Primary) MirrorDisk(size int64) {
	p.blocks, p.diskSize = dirtylog.NewBlocks(size, format.DiskBlockSize), size
}

// NewPrimary prepares a primary for generation gen, already won through
// fence. m is the guest, built on plug (NewPrimary plugs the recording Env
// in); out holds the guest's outputs until the backup has the log that
// produced them (its Env must carry gen and fence).
func NewPrimary(cfg Config, m machine.Stepper, plug *Plug, out *outbuf.Buffer, fence *witness.Fence, gen uint64, log *slog.Logger) (*Primary, error) {
	return newPrimary(cfg, m, plug, out, fence, gen, 0, log)
}

// newPrimary is NewPrimary with the guest clock starting at clockFrom (a
// backup going live continues its guest's time).
func newPrimary(cfg Config, m machine.Stepper, plug *Plug, out *outbuf.Buffer, fence *witness.Fence, gen, clockFrom uint64, log *slog.Logger) (*Primary, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Primary{
		cfg: cfg, m: m, out: out, fence: fence, log: log, Stats: &Stats{},
		rx: rxQueue{max: cfg.RxQueue}, wake: make(chan struct{}, 1), attach: make(chan net.Conn, 1), detach: make(chan chan<- error, 1), ackedCh: make(chan struct{}, 1),
		syncKick: make(chan struct{}, 1),
		clock:    newGuestClock(clockFrom),
	}
	p.gen.Store(gen)
	p.kickTimer = time.AfterFunc(time.Hour, m.Kick)
	p.kickTimer.Stop()
	p.rxKick = time.AfterFunc(time.Hour, func() { p.rxKickArmed.Store(false); m.Kick() })
	p.rxKick.Stop()
	plug.Set(primaryEnv{p})
	return p, nil
}

// Receive hands the guest a frame from the network. It is queued until the
// engine's next boundary, where it is logged and delivered; a full queue
// drops it, as a NIC does. Safe from any goroutine.
func (p *Primary) Receive(frame []byte) {
	if !p.rx.push(frame) {
		p.Stats.RxDropped.Add(1)
		return
	}
	p.wakeHalted()
	if p.rxKickArmed.CompareAndSwap(false, true) {
		p.rxKick.Reset(p.cfg.LandingDelay)
	}
}

// wakeHalted gets a halt wait's attention.
func (p *Primary) wakeHalted() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// poke gets the engine's attention: out of a halt wait, or out of the guest.
func (p *Primary) poke() {
	p.wakeHalted()
	p.m.Kick()
}

// Run drives the guest until ctx ends or the guest powers off (nil). With a
// conn to a backup it first brings the backup to the guest's state with a
// full checkpoint, then records. If the backup is lost it applies the
// paper's rule: with the next generation won it logs ErrBackupLost and runs
// on alone (until Attach gives it a new backup); otherwise it stops the
// guest and returns an error wrapping witness.ErrHalt. conn nil runs alone
// from the start.
func (p *Primary) Run(ctx context.Context, conn net.Conn) error {
	p.ctx = ctx
	defer p.disconnect()
	// A guest that runs without exits (one polling memory) returns from
	// Run only when kicked: the end of ctx kicks it.
	defer context.AfterFunc(ctx, p.poke)()
	if p.SyncDisk != nil {
		// The syncer ends with Run, whatever ends Run (a halt, the guest's
		// power-off, an error), not only with ctx.
		sctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); p.syncer(sctx) }()
		defer func() { stop(); wg.Wait() }()
	}
	if conn == nil {
		if err := p.goAlone(); err != nil {
			return err
		}
	} else if err := p.connect(conn); err != nil {
		p.linkFailed(err)
	}
	err := p.drive(ctx)
	p.flush() // what the guest did last goes to the backup too
	return err
}

// Attach gives a primary running alone a new backup at the other end of
// conn (the paper's FT VMotion: the backup starts from a full checkpoint
// of the running guest, then follows the log). The engine takes it at its
// next boundary. Safe from any goroutine.
func (p *Primary) Attach(conn net.Conn) error {
	if p.protected.Load() {
		return errors.New("the guest already has a backup")
	}
	select {
	case p.attach <- conn:
		p.poke()
		return nil
	default:
		return errors.New("a backup is already waiting to attach")
	}
}

// AcceptBackups lets backups join p through ln for as long as ctx lasts
// (it closes ln then): each one that connects while p runs alone starts
// from a full checkpoint of the running guest (Attach); one that comes
// while p has a backup is turned away.
func (p *Primary) AcceptBackups(ctx context.Context, ln net.Listener) {
	context.AfterFunc(ctx, func() { ln.Close() })
	p.log.Info("accepting backups", "addr", ln.Addr().String())
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if err := p.Attach(conn); err != nil {
				p.log.Warn("a backup tried to join", "from", conn.RemoteAddr(), "err", err)
				conn.Close()
			}
		}
	}()
}

// drive is the engine loop: boundary work, then run the guest to its next
// stop and record it.
func (p *Primary) drive(ctx context.Context) error {
	defer p.kickTimer.Stop()
	defer p.rxKick.Stop()
	p.needMark = true
	for {
		if err := p.boundary(); err != nil {
			return err
		}
		if p.m.Halted() {
			p.waitHalted()
			continue
		}
		if p.needMark {
			if err := p.m.Mark(); err != nil {
				return err
			}
			p.needMark = false
		}
		p.armKick()
		e, err := p.m.Run()
		p.kickTimer.Stop()
		if err != nil {
			return fmt.Errorf("running the guest: %w", err)
		}
		_, asker := p.m.(WindowAsker)
		p.atWindow = e.Kind == machine.ExitWindow && asker
		if e.Kind == machine.ExitKicked || p.atWindow {
			// Logged only if the boundary delivers something here (alone,
			// nothing is logged); at a window, the interrupt it opened
			// for, named by the stop's signature as a kick's stop is.
			p.unlogged = p.recording
			p.flushIfStale()
			continue
		}
		p.unlogged, p.needMark = false, true
		p.Stats.Exits.Add(1)
		p.append(Entry{Type: EntryExit, Exit: e})
		if !e.Kind.IsIO() {
			continue
		}
		if err := p.m.Complete(&e); err != nil {
			if errors.Is(err, machine.ErrPowerOff) {
				return p.finish()
			}
			return fmt.Errorf("completing %v: %w", e, err)
		}
		if e.Kind.IsRead() {
			p.append(Entry{Type: EntryValue, Exit: machine.Exit{Size: e.Size, Data: e.Data}})
		}
	}
}

// boundary is the work done between two runs of the guest, each step
// logged so the backup does the same at the same point: the backup-lost
// rule and full syncs first, then received frames, due timers, and the
// interrupt the guest can take.
//
// At a kick the log does not name yet (unlogged), whether anything
// reaches the guest is decided once, from one look at the received frames
// and one reading of the clock: if so, the stop is logged as a landing
// first (logStop); if not, nothing reaches the guest here, not even a
// pending interrupt (the backup's guest never stops here to take it).
// Deciding twice, as a separate look before the boundary did, let a timer
// fall due or a frame arrive in between and be delivered at a stop the
// backup could not reach.
func (p *Primary) boundary() error {
	if err := p.ctx.Err(); err != nil {
		// The log ends where the guest stopped: a backup that replays it
		// all holds the primary's machine. One still pre-copying gets the
		// rest of its full checkpoint first.
		if p.precopy != nil && !p.linkIsDown() {
			if ferr := p.finishPrecopy(); ferr != nil {
				return ferr
			}
		}
		if lerr := p.logStop(); lerr != nil {
			return lerr
		}
		p.logHold() // a backup going live from here keeps the guest held
		return err
	}
	select {
	case done := <-p.detach:
		if err := p.detachBackup(done); err != nil {
			return err
		}
	default:
	}
	if p.recording && p.linkIsDown() {
		if err := p.backupLost(); err != nil {
			return err
		}
	}
	if p.precopy != nil && p.linkIsDown() {
		p.log.Warn("the backup was lost before its full checkpoint; going on alone", "cause", context.Cause(p.linkCtx))
		p.dropPrecopying()
	}
	if !p.recording && p.precopy == nil {
		select {
		case conn := <-p.attach:
			p.attachBackup(conn)
		default:
		}
	}
	if p.precopy != nil && p.resync.Swap(0) != 0 {
		// The backup refused a round: the rest of this sync is worthless.
		p.log.Warn("the backup refused a pre-copy round; stopping to copy it all")
		p.stopPrecopy()
		p.recording, p.stopAndCopy = true, true // the sync below sends the sync entry first
	}
	if p.precopy != nil {
		if due, _ := p.precopyDue(); due {
			if err := p.precopyStep(); err != nil {
				return err
			}
		}
	}
	if p.recording && p.stopAndCopy {
		p.stopAndCopy = false
		p.resync.Store(0) // answered by this sync
		if err := p.sync(); err != nil {
			return err
		}
	}
	if p.recording && p.resync.Load() != 0 {
		resync := p.resyncWhileRunning
		if p.resync.Swap(0)&resyncAfterGap != 0 {
			resync = p.sync
		}
		if err := resync(); err != nil {
			return err
		}
	}
	if err := p.syncErr.Load(); err != nil {
		return fmt.Errorf("making released disk writes durable: %w", *err)
	}
	frames := slices.DeleteFunc(p.rx.take(), func(f []byte) bool {
		return len(f) > MaxFrame // no device takes it; dropped as a NIC drops
	})
	var now uint64
	poll := false
	if dl, ok := p.m.TimerDeadline(); ok {
		now = p.clock.now()
		poll = now >= dl
	}
	if len(frames) > 0 || poll {
		if err := p.logStop(); err != nil {
			return err
		}
	}
	if c := p.committed.Load(); p.recording && c > p.released {
		// Every output at or below c is released by now (by the ack's
		// Commit, or by a Hold that found c committed). Disk writes among
		// them must be durable before the backup hears so: until the
		// syncer says they are, mark only what it has covered.
		mark := c
		if d := p.durable.Load(); p.SyncDisk != nil && p.lastWrite > d && d < c {
			mark = d
			p.syncWant.Store(c)
			select {
			case p.syncKick <- struct{}{}:
			default:
			}
		}
		if mark > p.released {
			p.append(Entry{Type: EntryReleased, LSN: mark})
			p.released = mark
		}
	}
	p.logHold()
	for _, f := range frames {
		p.append(Entry{Type: EntryFrame, Bytes: f})
		p.m.DeliverFrame(f)
	}
	if poll {
		p.append(Entry{Type: EntryPoll, Time: now})
		p.m.PollTimers(now)
	}
	if p.unlogged && !p.atWindow {
		return nil
	}
	if err := p.logStop(); err != nil {
		return err
	}
	delivered, err := p.m.InjectPending()
	if err != nil {
		return fmt.Errorf("injecting an interrupt: %w", err)
	}
	if delivered {
		p.append(Entry{Type: EntryInject})
	}
	return nil
}

// logStop names the kicked stop the guest is at in the log, as a landing,
// if the log does not name it yet (see boundary).
func (p *Primary) logStop() error {
	if !p.unlogged {
		return nil
	}
	sig, err := p.m.Signature()
	if err != nil {
		return err
	}
	p.append(Entry{Type: EntryLanding, Sig: sig})
	p.Stats.Landings.Add(1)
	p.unlogged, p.needMark = false, true
	return nil
}

// armKick sets the kick timer for the first of: the guest's timer deadline
// plus LandingDelay (a synchronous exit before then delivers the interrupt
// without a landing, which the backup reaches far more cheaply), the open
// batch's flush deadline, and, while pre-copying, precopyEvery.
func (p *Primary) armKick() {
	wait := time.Duration(-1)
	if dl, ok := p.m.TimerDeadline(); ok {
		wait = max(p.clock.until(dl)+p.cfg.LandingDelay, 0)
	}
	if p.recording && p.w.Len() > 0 {
		f := max(p.cfg.FlushInterval-time.Since(p.batchAt), 0)
		if wait < 0 || f < wait {
			wait = f
		}
	}
	if p.precopy != nil {
		_, next := p.precopyDue()
		if next = max(next, 0); wait < 0 || next < wait {
			wait = next // the next round message goes at a boundary
		}
	}
	if wait >= 0 {
		p.kickTimer.Reset(wait)
	}
}

// waitHalted waits while the guest is halted until something may wake it
// (a frame, a timer deadline, a resync, a link failure or the end of ctx:
// the boundary after it stops the engine), a pre-copy round is due, or the
// operator's hold changes (HoldWatcher).
func (p *Primary) waitHalted() {
	p.flush()
	wait := time.Duration(-1)
	if dl, ok := p.m.TimerDeadline(); ok {
		wait = max(p.clock.until(dl), 0)
	}
	if p.precopy != nil {
		_, next := p.precopyDue() // an idle guest's time goes to the pre-copy
		if next = max(next, 0); wait < 0 || next < wait {
			wait = next
		}
	}
	var timer <-chan time.Time
	if wait >= 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timer = t.C
	}
	var held <-chan struct{}
	if w, ok := p.m.(HoldWatcher); ok && p.recording {
		held = w.HoldChanged()
	}
	select {
	case <-p.ctx.Done():
	case <-p.wake:
	case <-timer:
	case <-held: // the boundary after logs it
	}
}

// append logs e (when recording) and ships the batch when it is full.
func (p *Primary) append(e Entry) {
	if !p.recording {
		return
	}
	if p.w.Len() == 0 {
		p.w.Reset(p.gen.Load(), p.lsn+1)
		p.batchAt = time.Now()
	}
	p.w.Add(&e)
	p.lsn++
	p.Stats.Entries.Add(1)
	if p.w.Size() >= p.cfg.BatchBytes {
		p.flush()
	}
}

// flushIfStale ships the open batch if its first entry has waited
// FlushInterval.
func (p *Primary) flushIfStale() {
	if p.w.Len() > 0 && time.Since(p.batchAt) >= p.cfg.FlushInterval {
		p.flush()
	}
}

// flush ships the open batch. If the link is down the batch is dropped: the
// backup-lost rule runs at the next boundary.
func (p *Primary) flush() {
	if !p.recording || p.w.Len() == 0 {
		return
	}
	data := append([]byte(nil), p.w.Finish()...)
	p.w.Reset(p.gen.Load(), p.lsn+1)
	p.Stats.LogBytes.Add(uint64(len(data)))
	p.Stats.Batches.Add(1)
	p.enqueue(message{format.MsgLog, data})
}

// hold keeps an output until the backup has the log through the current
// LSN. The log is shipped first: the ack that releases the output (and
// makes room, if the buffer is full) needs it. If the backup is lost while
// the buffer is full, the backup-lost rule runs here.
func (p *Primary) hold(o outbuf.Output) error {
	if !p.recording {
		if err := p.out.Hold(p.ctx, p.lsn, o); err != nil {
			return err
		}
		return p.out.Commit(p.lsn)
	}
	p.append(Entry{Type: EntryOutput, Out: SumOutput(o)})
	p.flush()
	for {
		ctx := p.ctx
		if p.recording {
			ctx = p.linkCtx
		}
		err := p.out.Hold(ctx, p.lsn, o)
		if err == nil || !p.recording || p.ctx.Err() != nil || p.linkCtx.Err() == nil {
			return err // held, or refused for another reason than the link
		}
		if err := p.backupLost(); err != nil {
			return err
		}
	}
}

// finish is the end of a guest that powered off: its last outputs leave
// once the backup has the log that produced them (or the primary is alone).
func (p *Primary) finish() error {
	p.flush()
	return p.awaitAcks(p.lsn)
}

// primaryEnv is the recording Env: it answers from this host and logs what
// it answered.
type primaryEnv struct{ p *Primary }

func (e primaryEnv) Now() uint64 {
	t := e.p.clock.now()
	e.p.append(Entry{Type: EntryTime, Time: t})
	return t
}

func (e primaryEnv) ReadDisk(b []byte, off int64) error {
	// Through the buffer: the guest reads its own held writes.
	if _, err := e.p.out.ReadAt(b, off); err != nil {
		return err
	}
	for len(b) > 0 {
		n := min(len(b), MaxDiskRead)
		e.p.append(Entry{Type: EntryDiskRead, Off: off, Bytes: b[:n]})
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func (e primaryEnv) WriteDisk(b []byte, off int64) error {
	err := e.p.hold(outbuf.DiskWrite(b, off))
	e.p.lastWrite = e.p.lsn // the position it was held at
	if err == nil && e.p.blocks != nil {
		e.p.blocks.Mark(off, len(b)) // held: a read through the buffer sees it
	}
	return err
}

func (e primaryEnv) FlushDisk() error { return e.p.flushDisk() }

func (e primaryEnv) SendFrame(frame []byte) error {
	return e.p.hold(outbuf.NetFrame(frame))
}

func (e primaryEnv) Console(b []byte) {
	if e.p.Console != nil {
		e.p.Console.Write(b)
	}
}
