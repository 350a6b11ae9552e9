package replay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/witness"
)

// The primary's link to its backup: greeting it, the goroutines that send,
// receive and watch it, and the paper's rule when it is lost.

// disconnect stops the link's goroutines, if any, and forgets the image
// hashes of its backup: they describe no other backup's image.
func (p *Primary) disconnect() {
	if p.stopLink != nil {
		p.stopLink()
		p.stopLink = nil
	}
	p.startImage = nil
	p.hashes.Set(nil)
}

// connect greets the backup and starts the link's goroutines and
// recording, from a full checkpoint taken at once (the guest has not run).
func (p *Primary) connect(conn net.Conn) error {
	p.recording = true
	p.stopAndCopy = true // the backup starts from a full checkpoint
	p.Stats.KeptBlocks.Store(0)
	p.startImage = nil
	if p.blocks != nil {
		p.startImage = session.NewBackupImage(p.out, p.diskSize)
	}
	_, err := p.connectLink(conn, p.startImage, false)
	return err
}

// connectLink greets the backup and starts the link's goroutines (stopLink
// stops them). image, if not nil, asks the backup for its disk image's
// hashes, which the receiver adds to it; askMemory asks for its memory's,
// and if the backup offers them, they go to the BackupMemory it returns.
// The Hello also says that a later sync may ask for the memory's and (with
// image) the image's hashes again (resyncWhileRunning).
func (p *Primary) connectLink(conn net.Conn, image *session.BackupImage, askMemory bool) (*session.BackupMemory, error) {
	p.linkCtx, p.cancelLink = context.WithCancelCause(p.ctx)
	p.broken.Store(false)
	p.failed = make(chan struct{})
	p.ackMu.Lock()
	p.acksOff = false
	p.ackMu.Unlock()
	p.sendq = make(chan message, p.cfg.MaxInFlight)
	// Acks are this backup's: a backup before it (detached, lost) acked
	// its own sync, which would have this one in sync (InSync) before it
	// holds anything. The last link's receiver has ended (disconnect).
	p.committed.Store(0)
	p.protected.Store(true)
	l := format.NewLink(conn, p.cfg.MaxCheckpoint, nil)
	pages := uint64(len(p.m.Memory())) / format.PageSize
	hello := format.Hello{Role: format.RolePrimary, MemPages: pages, Machine: p.cfg.Machine, WantImageHashes: image != nil, WantMemoryHashes: true}
	peer, err := l.Hello(hello, p.cfg.FailureTimeout)
	if err != nil {
		conn.Close()
		return nil, err
	}
	var memory *session.BackupMemory
	if askMemory && peer.SendsMemoryHashes {
		memory = session.NewBackupMemory(pages)
	}
	p.hashes.Set(&session.Hashes{For: format.HelloHashes, Image: image, Memory: memory})
	stopc := make(chan struct{})
	sent, received := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer close(sent); p.send(l, stopc) }()
	go func() { defer close(received); p.receive(l) }()
	go func() { defer wg.Done(); l.Heartbeats(p.cfg.Heartbeat, p.cfg.FailureTimeout, stopc, p.linkFailed) }()
	go func() { defer wg.Done(); p.watch(l, stopc) }()
	// Stopping is graceful: the sender ships what is queued, then the
	// write side closes, so the backup reads the whole log before the end
	// of the stream (a plain close with acks unread could reset it). A
	// link that failed has nothing more to carry: it closes at once, which
	// also ends a send or a read blocked on it.
	//
	// Acks stop releasing before the backup can see the end of the stream:
	// it then takes over and emits again every output the log does not
	// mark released, so a late ack applied here would have both hosts
	// emit, the old one after the new.
	p.stopLink = func() {
		close(stopc)
		if p.linkIsDown() {
			conn.Close()
		}
		wg.Wait()
		<-sent
		p.ackMu.Lock()
		p.acksOff = true
		p.ackMu.Unlock()
		if hc, ok := conn.(interface{ CloseWrite() error }); ok && !p.linkIsDown() && hc.CloseWrite() == nil {
			select {
			case <-received:
			case <-time.After(p.cfg.FailureTimeout):
			}
		}
		conn.Close()
		<-received
	}
	return memory, nil
}

// linkFailed records the first failure of the link and wakes the engine,
// which applies the backup-lost rule at its next boundary.
func (p *Primary) linkFailed(err error) {
	p.cancelLink(err)
	if p.broken.CompareAndSwap(false, true) {
		close(p.failed)
	}
	p.poke()
}

// linkIsDown says whether the link failed.
func (p *Primary) linkIsDown() bool { return p.broken.Load() }

// watch declares the link failed when the backup falls silent.
func (p *Primary) watch(l *format.Link, stop <-chan struct{}) {
	everyUntil(p.cfg.Heartbeat, stop, func() bool {
		s := l.SilentFor()
		if s > p.cfg.FailureTimeout {
			p.linkFailed(fmt.Errorf("nothing from the backup for %v", s.Round(time.Millisecond)))
		}
		return s > p.cfg.FailureTimeout
	})
}

// send writes queued messages in order until stop, then what is still
// queued, unless the link failed.
func (p *Primary) send(l *format.Link, stop <-chan struct{}) {
	for {
		var msg message
		select {
		case <-stop:
			for {
				select {
				case msg := <-p.sendq:
					if p.linkIsDown() || l.Send(msg.t, msg.payload, p.cfg.FailureTimeout) != nil {
						return
					}
				default:
					return
				}
			}
		case msg = <-p.sendq:
		}
		if err := l.Send(msg.t, msg.payload, p.cfg.FailureTimeout); err != nil {
			p.linkFailed(err)
			return
		}
	}
}

// receive reads the backup's acks, resync requests, sync rounds applied
// and range hashes (into the series the pre-copy under way compares with,
// if of it: p.hashes) until the link fails, and fails the link with why.
func (p *Primary) receive(l *format.Link) {
	p.linkFailed(l.ReceiveFromBackup(format.FromBackup{Ack: p.handleAck, Resync: p.handleResync, Rounds: p.handleRounds,
		ImageHashes: func(h format.ImageHashes) error {
			if p.blocks == nil {
				return errors.New("the backup sent its image's hashes unasked")
			}
			return p.addHashes(p.hashes.AddImage(h))
		},
		MemoryHashes: func(h format.MemoryHashes) error { return p.addHashes(p.hashes.AddMemory(h)) },
	}))
}

// addHashes wakes the engine once hashes were added without error: a
// pre-copy waiting for them goes on.
func (p *Primary) addHashes(err error) error {
	if err == nil {
		p.poke()
	}
	return err
}

// handleAck releases the outputs held through the LSN the backup acked,
// unless it acks another generation's log. Called by the receiver.
func (p *Primary) handleAck(a format.Ack) error {
	if a.Generation != p.gen.Load() {
		return nil // another generation's log releases nothing
	}
	return p.applyAck(a.Epoch)
}

// handleResync makes the engine take a full checkpoint, unless one begun
// after the LSN the backup asks from is on its way. Called by the
// receiver.
func (p *Primary) handleResync(r format.Resync) {
	if r.Epoch < p.lastSync.Load() {
		return // the backup has a sync after that point coming: moot
	}
	p.log.Warn("backup asks for a full checkpoint", "reason", r.Reason, "detail", r.Detail, "lsn", r.Epoch)
	p.Stats.Resyncs.Add(1)
	asked := uint32(resyncAsked)
	if r.Reason == format.ResyncGap {
		asked |= resyncAfterGap
	}
	p.resync.Or(asked)
	select {
	case p.ackedCh <- struct{}{}: // an engine awaiting acks gets none before the sync
	default:
	}
	p.poke()
}

// handleRounds notes how many pre-copy rounds the backup applied, by
// which the engine paces the pre-copy. Called by the receiver.
func (p *Primary) handleRounds(r format.Rounds) {
	p.roundsApplied.Store(r.Count) // one link, one pre-copy: see precopyDue
	p.poke()
}

// applyAck releases the outputs held through lsn, which the backup has
// acknowledged, unless the link is closing (acksOff). Called by the
// receiver.
func (p *Primary) applyAck(lsn uint64) error {
	p.ackMu.Lock()
	defer p.ackMu.Unlock()
	if p.acksOff {
		return nil
	}
	if err := p.out.Commit(lsn); err != nil {
		return fmt.Errorf("releasing outputs through LSN %d: %w", lsn, err)
	}
	if lsn > p.committed.Load() {
		p.committed.Store(lsn) // only the receiver stores it (and connectLink, before it starts)
		p.Stats.Acked.Store(lsn)
		select {
		case p.ackedCh <- struct{}{}:
		default:
		}
	}
	return nil
}

// enqueue hands msg to the sender, waiting while MaxInFlight messages are
// queued; if the link fails first, msg is dropped. A primary stopping
// (Run's ctx ended) waits for room too: what it sends last, the log to
// where its guest stopped and a pre-copy's commit, lets the backup take
// over from there. That wait is bounded: a send that cannot go on fails
// the link within FailureTimeout.
func (p *Primary) enqueue(msg message) {
	select {
	case p.sendq <- msg:
		return
	default:
	}
	select {
	case p.sendq <- msg:
	case <-p.failed:
	}
}

// goAlone releases every output held and drops the log not shipped: there
// is no backup to wait for. From now on hold releases each output at once,
// until a backup attaches.
func (p *Primary) goAlone() error {
	p.recording, p.unlogged = false, false
	p.protected.Store(false)
	// The open batch was for the backup lost: no one will read it. A
	// backup that attaches later starts from a sync in the generation now
	// held, and a batch of the old one ahead of it would tell it that its
	// primary was replaced: it would take over from a running primary.
	p.w.Reset(p.gen.Load(), p.lsn+1)
	return p.releaseHeld()
}

// releaseHeld releases every output held: no backup will go live with a
// state that has not seen them (it is lost, or cannot go live before a
// full checkpoint to come). The engine's.
func (p *Primary) releaseHeld() error {
	if err := p.out.Commit(p.lsn); err != nil {
		return fmt.Errorf("releasing held outputs: %w", err)
	}
	return nil
}

// backupLost applies the paper's rule for a primary without its backup:
// win the next generation and go on alone, or halt.
func (p *Primary) backupLost() error {
	if !p.recording {
		return nil
	}
	if err := p.ctx.Err(); err != nil {
		return err // stopping: not a contest for the next generation
	}
	p.recording = false
	p.protected.Store(false)
	cause := context.Cause(p.linkCtx)
	p.log.Warn("backup lost", "cause", cause)
	// The link goes first: an ack the receiver read late would release
	// outputs while the contest has the fence suspended, and a release the
	// fence refuses fails the output buffer for good, leaving a primary
	// that won the next generation unable to emit anything.
	p.disconnect()
	dctx, cancel := context.WithTimeout(p.ctx, p.cfg.DecideTimeout)
	defer cancel()
	if err := witness.PrimaryLostBackup(dctx, p.fence); err != nil {
		return fmt.Errorf("backup lost (%v), and %w", cause, err)
	}
	gen, _ := p.fence.Held()
	p.gen.Store(gen)
	p.log.Warn(ErrBackupLost.Error(), "generation", gen)
	p.Stats.BackupsLost.Add(1)
	return p.goAlone()
}
