package replay

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/witness"
)

// Backup re-executes a primary's guest from the replay log, with its
// outputs suppressed, and takes over when the primary is lost.
//
// Follow's caller is the replayer: it drives the Machine and owns every
// field marked "replayer". A receiver goroutine reads the stream into the
// queue and acknowledges; a heartbeat goroutine keeps the primary informed.
type Backup struct {
	cfg     Config
	m       machine.Stepper
	plug    *Plug
	fence   *witness.Fence
	makeOut func(gen uint64) (*outbuf.Buffer, error)
	log     *slog.Logger
	recv    *format.Backup
	// Stats counts what the backup did; safe to read at any time.
	Stats *Stats
	// Console receives the guest's serial output once live (nil:
	// discarded), and SyncDisk becomes the live primary's (see
	// Primary.SyncDisk). Set before Follow.
	Console  io.Writer
	SyncDisk func() error
	// image, if set (MirrorDisk), is this backup's own disk image: the
	// replayer writes its guest's disk writes to it as it replays them,
	// through replayerImage, which imageClock times for watchReplayer.
	image, replayerImage vmm.Disk
	imageClock           session.OpClock
	// holds says the machine's memory holds a guest state already
	// (HoldsMemory). hashes sends the range hashes of its memory and image
	// the primary asks for (its Hello, a sync's first round), and is halted
	// and waited for before a sync's commit, after which the guest runs;
	// memMu is held by a hasher as it hashes a range and by the replayer as
	// it applies a pre-copy round. Both are the replayer's.
	holds  bool
	memMu  sync.Mutex
	hashes *session.HashSender

	q    *logQueue
	gate ackGate
	link *format.Link

	// Replayer.
	ctx      context.Context
	gen      uint64      // the generation of the primary followed
	lsn      uint64      // the last entry applied
	synced   bool        // the machine is the primary's guest as of lsn
	injected bool        // InjectPending delivered at this boundary
	held     atomic.Bool // the last EntryHeld said held (false from each sync): Held
	lastTime uint64      // the latest guest time the log showed
	window   []suppressed
	// roundRejected is why a pre-copy round of the sync in progress was
	// rejected; the sync's commit is refused (see stageRound).
	// roundsApplied counts its rounds applied, for the primary's pacing.
	roundRejected error
	roundsApplied uint64
	// envErr is a divergence (or a failed failover) found inside an Env
	// call, which cannot return it; the replayer checks it after each
	// Machine call that may use Env.
	envErr error
	live   *Primary // set by failover
}

// suppressed is an output the backup's guest produced at pos and that the
// primary may not have released yet.
type suppressed struct {
	pos uint64
	out outbuf.Output
}

// divergence is a disagreement between the backup's execution and the log.
type divergence struct {
	lsn uint64
	why string
}

func (d *divergence) Error() string { return fmt.Sprintf("divergence at LSN %d: %s", d.lsn, d.why) }

// NewBackup prepares a backup of a guest: m, built on plug, has the
// primary's memory size and has not run (its state comes from the
// primary's first full checkpoint). makeOut builds the output buffer of
// generation gen when the backup goes live.
func NewBackup(cfg Config, m machine.Stepper, plug *Plug, fence *witness.Fence, makeOut func(gen uint64) (*outbuf.Buffer, error), log *slog.Logger) (*Backup, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	recv, err := format.NewBackup(m.Memory(), format.BackupConfig{SharedMemory: true}) // its guest replays in it
	if err != nil {
		return nil, err
	}
	b := &Backup{cfg: cfg, m: m, plug: plug, fence: fence, makeOut: makeOut, log: log, recv: recv,
		Stats: &Stats{}, q: newLogQueue(cfg.BackupQueueBytes)}
	b.gate.hold(1) // nothing is reproducible before the first checkpoint
	plug.Set(backupEnv{b})
	if w, ok := m.(WindowAsker); ok {
		w.AskWindows(false) // interrupts go in only where the log says
	}
	return b, nil
}

// ErrImage marks a failure to write the backup's own disk image (a
// mirrored disk): a backup whose image lacks a write its guest issued
// cannot go live, so it stops (the primary loses it and goes on alone)
// instead of holding a silent difference.
var ErrImage = errors.New("the backup's disk image failed")

// MirrorDisk gives the backup its own image of the guest's disk
// (--disk-mode mirrored), the size of the primary's: full checkpoints copy
// the primary's disk to it (with --verify, and hashes of all of it, which
// the backup compares with its image: a difference is a divergence), the
// replayer writes each disk write its guest issues to it as it replays it,
// and going live it is flushed and nothing written again. A backup gone
// live mirrors its disk to its own backups. Call before Follow.
func (b *Backup) MirrorDisk(d vmm.Disk) error {
	if err := b.recv.MirrorDisk(d.Size()); err != nil {
		return err
	}
	b.image, b.replayerImage = d, session.TimedDisk{Disk: d, Clock: &b.imageClock}
	return nil
}

// writeImage puts on the backup's own image what an accepted checkpoint
// changed.
func (b *Backup) writeImage(res format.Result) error {
	if err := res.WriteImage(b.replayerImage); err != nil {
		return fmt.Errorf("%w: %w", ErrImage, err)
	}
	return nil
}

// Follow replays the log of the primary at the other end of conn. When the
// primary is lost it replays what it received, wins the next generation at
// the witness and returns the Primary it became: the caller runs it (with a
// nil conn) to go on. It returns an error wrapping ErrPowerOff if the
// replayed guest powered off (as the primary's did), and another error if
// ctx ends, if the backup cannot go live (it was not in sync, or the
// witness chose the primary), or on a fault of its own.
func (b *Backup) Follow(ctx context.Context, conn net.Conn) (*Primary, error) {
	b.ctx = ctx
	defer conn.Close()
	l := format.NewLink(conn, b.cfg.MaxCheckpoint, nil)
	hello := format.Hello{Role: format.RoleBackup, MemPages: uint64(len(b.m.Memory())) / format.PageSize, Machine: b.cfg.Machine,
		SendsMemoryHashes: b.holds}
	peer, err := l.Hello(hello, b.cfg.FailureTimeout)
	if err != nil {
		return nil, err
	}
	if peer.WantImageHashes && b.image == nil {
		return nil, errors.New("the primary asks for this backup's disk image, and it has none (--disk-mode mirrored on one side only?)")
	}
	b.link = l
	stop := make(chan struct{})
	defer close(stop)
	go b.receive(ctx, l, conn)
	go l.Heartbeats(b.cfg.Heartbeat, b.cfg.FailureTimeout, stop, func(err error) { conn.Close() })
	go b.watchReplayer(conn, stop)
	b.hashes = session.NewHashSender(l, peer, b.cfg.FailureTimeout, b.image, b.m.Memory(), &b.memMu, func(err error) {
		if ended, _ := b.q.ended(); !ended { // else the receiver closed the link at its end
			b.log.Error("could not send this backup's range hashes; dropping the link", "err", err)
		}
		conn.Close()
	})
	b.hashes.Start(format.HelloHashes, hello.SendsMemoryHashes)
	defer func() { b.hashes.Halt(); conn.Close(); b.hashes.Wait() }() // a hasher blocked writing returns
	stopKick := context.AfterFunc(ctx, b.m.Kick)
	defer stopKick()
	return b.replay()
}

// HoldsMemory says the machine's memory already holds most of the
// primary's guest (a node that handed its guest over and joins the new
// primary): Follow offers its hashes, and the primary's pre-copy sends
// only the ranges that differ. Call before Follow.
func (b *Backup) HoldsMemory() { b.holds = true }

// Held says whether the log replayed so far says the primary's operator
// holds the guest paused (EntryHeld): going live, the backup keeps it
// paused. Safe from any goroutine.
func (b *Backup) Held() bool { return b.held.Load() }

// replay is the replayer's loop: apply entries in order; on a divergence,
// ask for a full checkpoint and skip to it; at the end of the log, fail
// over.
func (b *Backup) replay() (*Primary, error) {
	for {
		next, err := b.q.peek(b.ctx)
		if errors.Is(err, errLogEnded) {
			b.failover()
			if b.live != nil {
				return b.live, nil
			}
			return nil, b.envErr
		}
		if err != nil {
			return nil, err
		}
		it := *next
		b.q.take()
		if it.ckpt != nil {
			if err := b.stageRound(it.ckpt); err != nil {
				return nil, err
			}
			continue
		}
		if it.e.Type == EntrySync {
			err = b.applySync(it.lsn)
		} else if !b.synced {
			continue
		} else {
			b.lsn = it.lsn
			err = b.apply(&it.e)
			b.Stats.Replayed.Add(1)
		}
		if b.live != nil {
			return b.live, nil
		}
		var d *divergence
		switch {
		case errors.As(err, &d):
			b.diverged(d)
		case err != nil:
			return nil, err
		}
	}
}

// diverged stops replay until the next full checkpoint and asks for one.
func (b *Backup) diverged(d *divergence) {
	b.Stats.Divergences.Add(1)
	b.log.Error("replay diverged from the primary; asking for a full checkpoint", "lsn", d.lsn, "why", d.why)
	// Out of sync, the backup cannot go live before the full checkpoint,
	// which brings the writes it must keep.
	b.synced = false
	b.window = nil
	b.envErr = nil
	b.gate.hold(d.lsn)
	b.askResync(format.ResyncDivergence, d.lsn, d.why)
}

// stageRound applies a pre-copy round of the full checkpoint whose sync
// entry is to come (see precopy) to a backup not in sync. Any other
// checkpoint without its sync entry is skipped: a sync is coming.
//
// A rejected round spoils the whole sync: the primary's page cache now
// describes pages this backup does not have, and a later round's XOR delta
// against one would be applied to another page. The backup asks for a full
// checkpoint at once (the primary then stops to copy it all), and skips
// the sync's other rounds and refuses its commit should they come.
func (b *Backup) stageRound(ckpt []byte) error {
	h, ok := format.PeekHeader(ckpt)
	if b.synced || !ok || h.Kind != format.KindSyncRound {
		return nil
	}
	if h.Flags&format.FlagSyncStart != 0 {
		b.roundRejected, b.roundsApplied = nil, 0 // a new sync
	}
	if b.roundRejected != nil {
		return nil
	}
	b.memMu.Lock()
	res, err := b.recv.Receive(ckpt)
	b.memMu.Unlock()
	if err != nil {
		b.log.Warn("pre-copy round rejected; asking for a full checkpoint instead", "err", err)
		b.roundRejected = err
		b.askResync(format.ResyncRejected, h.Epoch, fmt.Sprintf("pre-copy round rejected: %v", err))
		return nil
	}
	if b.image != nil {
		if err := b.writeImage(res); err != nil {
			return err
		}
	}
	if h.Flags&format.FlagSendHashes != 0 {
		// A resync's first round asks for what this backup holds now.
		b.hashes.Start(format.HashesFor{Generation: h.Generation, Epoch: h.Epoch}, true)
	}
	b.Stats.Rounds.Add(1)
	b.roundsApplied++
	r := format.Rounds{Generation: h.Generation, Epoch: h.Epoch, Count: b.roundsApplied}
	b.link.Send(format.MsgRounds, r.Append(nil), b.cfg.FailureTimeout) // a failure shows as silence
	return nil
}

// applySync applies the full checkpoint that follows the sync entry at s.
func (b *Backup) applySync(s uint64) error {
	it, err := b.q.peek(b.ctx)
	if errors.Is(err, errLogEnded) {
		return nil // the primary died before sending it: fail over from here, before s
	}
	if err != nil {
		return err
	}
	if it.ckpt == nil {
		return &divergence{s, "sync entry not followed by its checkpoint"}
	}
	ckpt := it.ckpt
	b.q.take()
	if err := b.roundRejected; err != nil {
		if h, _ := format.PeekHeader(ckpt); h.Flags&format.FlagSyncStart == 0 {
			return &divergence{s, fmt.Sprintf("a pre-copy round of this sync was rejected: %v", err)}
		}
	}
	b.roundRejected = nil
	b.hashes.Halt() // from the commit on the guest runs: its pre-copy is over
	b.hashes.Wait()
	res, err := b.recv.Receive(ckpt)
	if err != nil {
		return &divergence{s, fmt.Sprintf("checkpoint rejected: %v", err)}
	}
	if b.image != nil {
		if err := b.writeImage(res); err != nil {
			b.synced = false // nobody goes live with this image
			return err
		}
		buf := make([]byte, format.DiskHashRange)
		if err := format.CompareImage(b.replayerImage, b.image.Size(), res.DiskHashes, buf); errors.Is(err, format.ErrImageDiffers) {
			return &divergence{s, err.Error()} // the next full checkpoint copies every block
		} else if err != nil {
			b.synced = false
			return fmt.Errorf("%w: %w", ErrImage, err)
		}
	}
	if !res.Committed || res.Header.Epoch != s {
		return &divergence{s, fmt.Sprintf("checkpoint %v does not commit the sync at LSN %d", res.Header, s)}
	}
	if err := b.m.RestoreState(b.recv.Machine()); err != nil {
		return &divergence{s, fmt.Sprintf("restoring the machine state: %v", err)}
	}
	b.gen = res.Header.Generation
	b.lsn, b.synced, b.injected = s, true, false
	b.held.Store(false)
	// The disk writes that may still have to reach the disk are those the
	// primary held at s, which the checkpoint carries; the window's other
	// writes are released and durable, and writing them again after a
	// later one would undo it. The window's frames stay (sending one again
	// is allowed); frames the primary held after a divergence, which the
	// backup never produced, are lost with it, as on a network.
	window := slices.DeleteFunc(b.window, func(s suppressed) bool { return s.out.Kind == outbuf.KindDiskWrite })
	for _, w := range b.recv.DiskWrites() {
		window = append(window, suppressed{pos: w.Epoch, out: outbuf.DiskWrite(bytes.Clone(w.Data), w.Off)})
	}
	slices.SortStableFunc(window, func(a, b suppressed) int { return cmp.Compare(a.pos, b.pos) })
	b.window = window
	b.Stats.Applied.Add(1)
	b.gate.applied(s)
	b.ack()
	b.log.Info("full checkpoint applied", "lsn", s, "generation", b.gen)
	return nil
}

// apply replays one entry.
func (b *Backup) apply(e *Entry) error {
	switch e.Type {
	case EntryFrame:
		b.m.DeliverFrame(e.Bytes)
	case EntryPoll:
		b.lastTime = max(b.lastTime, e.Time)
		b.m.PollTimers(e.Time)
	case EntryInject:
		if b.injected {
			return &divergence{b.lsn, "a second injection at one boundary"}
		}
		ok, err := b.m.InjectPending()
		if err != nil {
			return err
		}
		if !ok {
			return &divergence{b.lsn, "the primary delivered an interrupt the backup's guest cannot take"}
		}
		b.injected = true
	case EntryReleased:
		b.release(e.LSN)
	case EntryHeld:
		b.held.Store(e.Held)
	case EntryExit:
		return b.runToExit(e.Exit)
	case EntryLanding:
		return b.land(e.Sig)
	default:
		return &divergence{b.lsn, fmt.Sprintf("%v outside an exit", e)}
	}
	return nil
}

// release forgets the suppressed outputs the primary released.
func (b *Backup) release(lsn uint64) {
	i := 0
	for i < len(b.window) && b.window[i].pos <= lsn {
		i++
	}
	b.window = append(b.window[:0], b.window[i:]...)
}

// enterGuest does what the primary did before entering its guest: try to
// inject (unless the log said it delivered here), then start a new
// signature interval.
func (b *Backup) enterGuest() error {
	if !b.injected {
		ok, err := b.m.InjectPending()
		if err != nil {
			return err
		}
		if ok {
			return &divergence{b.lsn, "the backup's guest took an interrupt the primary's did not"}
		}
	}
	b.injected = false
	if b.m.Halted() {
		return &divergence{b.lsn, "the backup's guest is halted where the primary's ran"}
	}
	return b.m.Mark()
}

// runToExit runs the guest to the synchronous exit the log names and
// completes it, checking every detail against the log.
func (b *Backup) runToExit(want machine.Exit) error {
	if err := b.enterGuest(); err != nil {
		return err
	}
	e, err := b.m.Run()
	if err != nil {
		return fmt.Errorf("running the guest: %w", err)
	}
	if e.Kind == machine.ExitKicked {
		return b.ctx.Err() // only a stop kicks the backup's guest
	}
	if !sameExit(e, want) {
		return &divergence{b.lsn, fmt.Sprintf("guest stopped at %v, the log says %v", e, want)}
	}
	if !e.Kind.IsIO() {
		return nil
	}
	exitLSN := b.lsn
	if err := b.m.Complete(&e); err != nil {
		if errors.Is(err, machine.ErrPowerOff) {
			return err // as on the primary: the end
		}
		return fmt.Errorf("completing %v: %w", e, err)
	}
	if b.envErr != nil || b.live != nil {
		return b.envErr
	}
	if !e.Kind.IsRead() {
		return nil
	}
	v, ok := b.expect(EntryValue)
	if b.live != nil || b.envErr != nil {
		return b.envErr
	}
	if !ok || v.Exit.Size != e.Size || v.Exit.Data != e.Data {
		return &divergence{exitLSN, fmt.Sprintf("%v read %x, the primary's read %x", e, e.Data[:e.Size], v.Exit.Data[:v.Exit.Size])}
	}
	return nil
}

// sameExit compares what both sides see of an exit.
func sameExit(got, want machine.Exit) bool {
	if got.Kind != want.Kind || got.RIP != want.RIP || got.Addr != want.Addr || got.Size != want.Size {
		return false
	}
	return !(got.Kind == machine.ExitPIOWrite || got.Kind == machine.ExitMMIOWrite) || got.Data == want.Data
}

// land runs the guest to the asynchronous point sig names: it stops at
// sig.RIP each time the guest gets there until registers and the pages
// dirtied since the last stop match.
func (b *Backup) land(sig machine.Signature) error {
	if err := b.enterGuest(); err != nil {
		return err
	}
	// A kick can stop the guest before it executes anything, so a landing
	// may be where the guest already is (RunTo would first step past it).
	if ok, err := b.m.Matches(sig); err != nil || ok {
		return err
	}
	for hits := 1; ; hits++ {
		e, err := b.m.RunTo(sig.RIP)
		if err != nil {
			return fmt.Errorf("running the guest to a landing: %w", err)
		}
		switch e.Kind {
		case machine.ExitBreakpoint:
		case machine.ExitKicked:
			return b.ctx.Err()
		default:
			return &divergence{b.lsn, fmt.Sprintf("guest stopped at %v before the landing at %#x", e, sig.RIP)}
		}
		b.Stats.BreakpointHits.Add(1)
		if ok, err := b.m.Matches(sig); err != nil || ok {
			return err
		}
		if hits >= b.cfg.MaxLandingHits {
			return &divergence{b.lsn, fmt.Sprintf("no match for the landing at %#x in %d visits", sig.RIP, hits)}
		}
	}
}

// expect takes the next entry if it has type t, for an Env answer. It
// reports false, leaving the entry, if the next entry is another (a
// divergence, noted in envErr) or if the log ended (then the backup fails
// over, and answers come from the live side).
func (b *Backup) expect(t EntryType) (Entry, bool) {
	if b.live != nil || b.envErr != nil {
		return Entry{}, false
	}
	it, err := b.q.peek(b.ctx)
	if errors.Is(err, errLogEnded) {
		b.failover()
		return Entry{}, false
	}
	if err != nil {
		b.envErr = err
		return Entry{}, false
	}
	if it.ckpt != nil || it.e.Type != t {
		b.envErr = &divergence{b.lsn + 1, fmt.Sprintf("the guest needed %v, the log has %v", t, it.e)}
		return Entry{}, false
	}
	e := *it
	b.q.take()
	b.lsn = e.lsn
	b.Stats.Replayed.Add(1)
	return e.e, true
}

// failover is the backup's side of the paper's rule, at the end of the
// log: win the next generation, then become a primary alone, re-issuing
// the outputs the old primary may not have released. On failure envErr
// says why.
func (b *Backup) failover() {
	_, cause := b.q.ended()
	if !b.synced {
		b.envErr = fmt.Errorf("primary lost (%v) while this backup is not in sync: cannot go live", cause)
		return
	}
	b.log.Warn("primary lost; log replayed", "cause", cause, "lsn", b.lsn)
	if err := witness.BackupLostPrimary(b.ctx, b.fence, b.gen, witness.DefaultBackoff); err != nil {
		b.envErr = fmt.Errorf("primary lost (%w); not going live: %w", cause, err)
		return
	}
	gen := b.gen + 1
	if w, ok := b.m.(WindowAsker); ok {
		w.AskWindows(true) // a primary takes interrupts as soon as it can
	}
	if b.held.Load() {
		machine.KeepHeld(b.m, b.log)
	}
	out, err := b.makeOut(gen)
	if err != nil {
		b.envErr = err
		return
	}
	p, err := newPrimary(b.cfg, b.m, b.plug, out, b.fence, gen, b.lastTime, b.log)
	if err != nil {
		b.envErr = err
		return
	}
	p.Console, p.SyncDisk, p.ctx = b.Console, b.SyncDisk, b.ctx
	if b.image != nil {
		// Every disk write of the window is on the image already.
		b.window = slices.DeleteFunc(b.window, func(s suppressed) bool { return s.out.Kind == outbuf.KindDiskWrite })
		if err := b.replayerImage.Flush(); err != nil {
			b.envErr = fmt.Errorf("%w: flushing it before going live: %w", ErrImage, err)
			return
		}
		p.MirrorDisk(b.image.Size())
	}
	if err := p.goAlone(); err != nil {
		b.envErr = err
		return
	}
	for _, s := range b.window {
		if err := out.Hold(b.ctx, 0, s.out); err != nil {
			b.envErr = fmt.Errorf("re-issuing an output of LSN %d: %w", s.pos, err)
			return
		}
	}
	b.log.Warn("live", "generation", gen, "reissued", len(b.window))
	b.window = nil
	b.live = p
}
