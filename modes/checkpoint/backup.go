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
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/witness"
)

// Backup keeps the last committed epoch of a primary's guest, ready to run.
type Backup struct {
	cfg   Config
	guest machine.Runner
	fence *witness.Fence
	recv  *format.Backup
	disk  vmm.Disk // set by SetDisk or MirrorDisk
	// mirrored is set by MirrorDisk: disk is this backup's own image, which
	// the receiver writes and reads through imageIO, timed by imageClock
	// (a hung image makes the link fall silent: Receive). hashBuf is the
	// receiver's, for verifyImage.
	mirrored   bool
	imageIO    vmm.Disk
	imageClock session.OpClock
	hashBuf    []byte
	// memMu is held by the receiver while it applies a checkpoint to the
	// guest's memory, and by a session.HashSender while it hashes a range.
	memMu sync.Mutex
	// holds says the memory holds a guest state, or most of one, whatever
	// the receiver's state: one held before anything was received
	// (HoldsMemory), or a sync dropped after a rejected message. Set
	// before Receive or by its goroutine.
	holds bool
	live  func(gen uint64) error // set by SetLive before GoLive
	log   *slog.Logger
	now   func() time.Time
	// status mirrors recv.Status() for other goroutines: recv belongs to
	// the receiver.
	status atomic.Pointer[format.Status]
}

// NewBackup prepares a backup whose guest (not started) receives the
// primary's checkpoints.
func NewBackup(cfg Config, g machine.Runner, fence *witness.Fence, log *slog.Logger) (*Backup, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	recv, err := format.NewBackup(g.Memory(), format.BackupConfig{})
	if err != nil {
		return nil, err
	}
	b := &Backup{cfg: cfg, guest: g, fence: fence, recv: recv, log: log, now: time.Now}
	b.publish()
	return b, nil
}

// HoldsMemory says the guest's memory already holds a guest state, or
// most of the primary's (a node that handed its guest over and joins the
// new primary): the backup offers its memory's hashes to the first
// primary, as it does once it has received anything. Call before
// Receive.
func (b *Backup) HoldsMemory() { b.holds = true }

// SetDisk gives the backup the shared disk, where GoLive writes again the
// disk writes of committed epochs the primary had not yet made durable.
// A guest with a disk needs it; call before GoLive.
func (b *Backup) SetDisk(d vmm.Disk) { b.disk = d }

// ErrImage marks a failure to write the backup's own disk image (a
// mirrored disk): the backup cannot go live with an image that lacks
// writes its committed state has seen, so it stops (the primary loses it,
// and goes on alone) instead of holding a silent difference.
var ErrImage = errors.New("the backup's disk image failed")

// MirrorDisk gives the backup its own image of the guest's disk
// (--disk-mode mirrored), which must be the size of the primary's: full
// syncs copy the primary's disk to it, and each committed checkpoint's disk
// writes are written to it before the checkpoint is acknowledged. Going
// live it is flushed, and nothing written again. Call before Receive.
func (b *Backup) MirrorDisk(d vmm.Disk) error {
	if err := b.recv.MirrorDisk(d.Size()); err != nil {
		return err
	}
	b.disk, b.mirrored = d, true
	b.imageIO = session.TimedDisk{Disk: d, Clock: &b.imageClock}
	return nil
}

// mirror puts an accepted checkpoint's changes on the backup's own image
// and compares it with the checkpoint's disk hashes (--verify). An image
// that fails is fatal (ErrImage: the backup stops); one that differs is a
// rejection (the committed state is dropped; the caller asks for a full
// sync). Either way the backup can no longer go live with that state.
func (b *Backup) mirror(res format.Result) (rejected, fatal error) {
	if err := b.writeImage(res); err != nil {
		b.recv.Discard()
		return nil, err
	}
	err := b.verifyImage(res.DiskHashes)
	if errors.Is(err, ErrImage) {
		b.recv.Discard()
		return nil, err
	}
	if err != nil {
		b.log.Error("the disk image differs from the primary's (--verify); dropping the committed state", "err", err)
		b.recv.Discard()
	}
	return err, nil
}

// writeImage puts on the backup's own image what an accepted checkpoint
// changed.
func (b *Backup) writeImage(res format.Result) error {
	if err := res.WriteImage(b.imageIO); err != nil {
		return fmt.Errorf("%w: %w", ErrImage, err)
	}
	return nil
}

// SetLive sets a function GoLive calls once it has won generation gen and
// restored the machine, before the disk writes are written again and the
// guest starts: the caller opens what the guest's devices reach the world
// through, so that nothing the guest sends once it runs is lost, and may
// turn its devices to a primary's (outputs held for the backups to come).
// An error stops GoLive. Call before GoLive.
func (b *Backup) SetLive(live func(gen uint64) error) { b.live = live }

// Status is the backup's position. Safe to call from any goroutine.
func (b *Backup) Status() format.Status { return *b.status.Load() }

func (b *Backup) publish() {
	st := b.recv.Status()
	b.status.Store(&st)
}

// Receive serves one connection from a primary: it applies checkpoints,
// acknowledges committed ones, reports each sync round message applied
// (MsgRounds, by which the primary paces its pre-copy), asks for a full
// sync after rejecting one, and sends the range hashes of its mirrored
// image and its memory as the primary asks (session.HashSender): for the first
// sync if the primary's Hello asked (the memory's only if it holds a
// guest state or part of one), and for each sync whose first message asks.
// It returns when the link fails or the primary falls silent for
// FailureTimeout; what was committed stays committed.
func (b *Backup) Receive(ctx context.Context, conn net.Conn) error {
	defer conn.Close()
	l := format.NewLink(conn, b.cfg.MaxCheckpoint, b.now)
	st := b.recv.Status()
	hello := format.Hello{Role: format.RoleBackup, MemPages: uint64(len(b.guest.Memory())) / format.PageSize, Machine: b.cfg.Machine}
	if st.State == format.StateCommitted {
		hello.Committed, hello.Generation, hello.Epoch = true, st.Generation, st.Epoch
	}
	hello.SendsMemoryHashes = st.State != format.StateEmpty || b.holds
	peer, err := l.Hello(hello, b.cfg.FailureTimeout)
	if err != nil {
		return err
	}
	if peer.WantImageHashes && !b.mirrored {
		return errors.New("the primary asks for this backup's disk image, and it has none (--disk-mode mirrored on one side only?)")
	}
	stop := make(chan struct{})
	halt := make(chan error, 1)
	fail := func(err error) {
		select {
		case halt <- err:
		default: // the loop ends with the first error
		}
	}
	c := &backupConn{l: l, hashes: session.NewHashSender(l, peer, b.cfg.FailureTimeout, b.disk, b.guest.Memory(), &b.memMu, fail)}
	// The hashers are done before the guest may run.
	defer func() { close(stop); c.hashes.Halt(); conn.Close(); c.hashes.Wait() }()
	// A backup whose image hangs in an operation (session.TimedDisk) falls
	// silent, so that its primary loses it instead of holding the guest's
	// outputs for ever.
	l.SetStuck(func() bool { return b.imageClock.Busy() > b.cfg.FailureTimeout })
	go l.Heartbeats(b.cfg.Heartbeat, b.cfg.FailureTimeout, stop, fail)
	c.hashes.Start(format.HelloHashes, hello.SendsMemoryHashes)
	go func() {
		select {
		case <-ctx.Done():
			conn.Close()
		case <-stop:
		}
	}()
	return l.ReceiveFromPrimary(b.cfg.FailureTimeout, format.FromPrimary{
		Checkpoint: func(payload []byte) error { return b.handleCheckpoint(c, payload) },
		Halt:       halt,
	})
}

// backupConn is what a backup's receiver keeps of one connection.
type backupConn struct {
	l *format.Link
	// rounds counts the sync round messages applied in the sync under way.
	rounds uint64
	hashes *session.HashSender
}

// handleCheckpoint applies a checkpoint from the primary and answers it on
// c's link: an ack if it committed, the count of sync rounds applied if it
// is one, a resync request naming it if it was rejected; and if it asks
// for hashes (FlagSendHashes) it starts their series. An error (the image
// failed, or an answer could not be sent) ends the connection. Called by
// Receive's loop.
func (b *Backup) handleCheckpoint(c *backupConn, payload []byte) error {
	l := c.l
	defer b.noteSlow(b.now())
	b.memMu.Lock()
	res, err := b.recv.Receive(payload)
	b.memMu.Unlock()
	if err == nil && b.mirrored {
		var fatal error
		if err, fatal = b.mirror(res); fatal != nil {
			b.publish()
			return fatal
		}
	}
	if err != nil && b.recv.Status().State == format.StateSyncing {
		// The primary's page cache holds the rejected message's pages as
		// this backup's: a later round's delta against one, or a page not
		// sent again, would leave memory wrong, which the sync's commit
		// checks only with --verify. The sync is spoiled: drop it, so
		// that the rest of it is refused, and sync again.
		b.log.Warn("a message of the sync under way was rejected; dropping the sync", "err", err)
		b.recv.Discard()
		b.holds = true // most of the guest still: worth offering to the next primary
	}
	b.publish()
	if err != nil {
		st := b.recv.Status()
		b.log.Warn("checkpoint rejected; asking for a full sync", "err", err, "committed", st.Epoch)
		r := format.Resync{Reason: format.ResyncRejected, Detail: err.Error()} // Append cuts it to MaxResyncDetail
		if st.State == format.StateCommitted {
			r.Generation, r.Epoch = st.Generation, st.Epoch
		}
		if h, ok := format.PeekHeader(payload); ok {
			r.Rejected = h.Name() // a sync's commit is not moot (Primary.handleResync)
		}
		return l.Send(format.MsgResync, r.Append(nil), b.cfg.FailureTimeout)
	}
	if h := res.Header; h.Kind == format.KindSyncRound {
		// The primary paces its pre-copy by the rounds applied.
		if h.Flags&format.FlagSyncStart != 0 {
			c.rounds = 0
		}
		if h.Flags&format.FlagSendHashes != 0 {
			c.hashes.Start(format.HashesFor{Generation: h.Generation, Epoch: h.Epoch}, true)
		}
		c.rounds++
		r := format.Rounds{Generation: h.Generation, Epoch: h.Epoch, Count: c.rounds}
		if err := l.Send(format.MsgRounds, r.Append(nil), b.cfg.FailureTimeout); err != nil {
			return err
		}
	}
	if res.Committed && res.Header.Kind == format.KindSyncCommit {
		b.log.Info("full sync committed: the guest is protected", "generation", res.Header.Generation, "epoch", res.Header.Epoch)
	}
	if res.Committed {
		a := format.Ack{Generation: res.Header.Generation, Epoch: res.Header.Epoch}
		return l.Send(format.MsgAck, a.Append(nil), b.cfg.FailureTimeout)
	}
	return nil
}

// noteSlow says so in the log if the checkpoint whose handling began at
// began took longer than the failure timeout: its ack came that late, and
// the primary held the guest's outputs as long.
func (b *Backup) noteSlow(began time.Time) {
	if took := b.now().Sub(began); took > b.cfg.FailureTimeout {
		b.log.Warn("a checkpoint took longer than the failure timeout to apply (--verify hashes what it wrote; or a slow disk image)",
			"took", took.Round(time.Millisecond), "failure timeout", b.cfg.FailureTimeout)
	}
}

// reissueDisk writes the committed epochs' writes that may not be on the
// disk again, in the order the guest issued them, and flushes.
func (b *Backup) reissueDisk(epoch uint64) error {
	ws := b.recv.DiskWrites()
	if len(ws) == 0 {
		return nil
	}
	if b.disk == nil {
		return fmt.Errorf("epoch %d has %d disk writes to write again, and this backup has no disk", epoch, len(ws))
	}
	bytes := 0
	for i, w := range ws {
		if _, err := b.disk.WriteAt(w.Data, w.Off); err != nil {
			return fmt.Errorf("writing again disk write %d of %d (epoch %d, %d bytes at %d): %w", i+1, len(ws), w.Epoch, len(w.Data), w.Off, err)
		}
		bytes += len(w.Data)
	}
	if err := b.disk.Flush(); err != nil {
		return fmt.Errorf("flushing the %d disk writes written again: %w", len(ws), err)
	}
	b.log.Warn("wrote again the disk writes the primary may not have made durable", "writes", len(ws), "bytes", bytes, "from epoch", ws[0].Epoch)
	return nil
}

// GoLive is the backup's failover: it asks the witness for the generation
// after the primary's (waiting while the witness is unreachable, until ctx
// ends), and only if it wins restores the last committed epoch, writes
// again, in order, every disk write of a committed epoch not known to be
// durable and flushes the disk (format.Backup.DiskWrites), and starts the
// guest. Network frames are not sent again: a released one must not
// repeat, and an unreleased one is a packet lost on the network. If the
// committed epoch's checkpoint says the operator held the guest paused
// (format.FlagHeld), the guest starts held (machine.KeepHeld). It returns
// the generation won. Precondition: the receiver has returned.
func (b *Backup) GoLive(ctx context.Context) (uint64, error) {
	st := b.recv.Status()
	if st.State != format.StateCommitted {
		return 0, fmt.Errorf("cannot go live: no committed epoch (backup is %v)", st.State)
	}
	if err := witness.BackupLostPrimary(ctx, b.fence, st.Generation, witness.DefaultBackoff); err != nil {
		return 0, fmt.Errorf("not going live: %w", err)
	}
	if err := b.guest.RestoreState(b.recv.Machine()); err != nil {
		return 0, fmt.Errorf("restoring epoch %d: %w", st.Epoch, err)
	}
	if b.live != nil {
		if err := b.live(st.Generation + 1); err != nil {
			return 0, err
		}
	}
	if b.mirrored {
		if err := b.disk.Flush(); err != nil {
			return 0, fmt.Errorf("%w: flushing it before going live: %w", ErrImage, err)
		}
	} else if err := b.reissueDisk(st.Epoch); err != nil {
		return 0, err
	}
	if st.Held {
		machine.KeepHeld(b.guest, b.log)
	}
	if err := b.guest.Start(); err != nil {
		return 0, err
	}
	b.log.Warn("live: restored the last committed epoch", "epoch", st.Epoch, "generation", st.Generation+1)
	return st.Generation + 1, nil
}

// Serve follows one primary after another, accepted on ln, until one is
// lost while this backup holds a committed epoch and GoLive wins the next
// generation: it returns that generation, the guest restored and started
// (its backends opened by SetLive's function). A primary lost before an epoch was
// committed, or a contest another candidate won, and it waits for the next
// primary. It returns ctx.Err() once ctx ends (closing ln stops it too).
func (b *Backup) Serve(ctx context.Context, ln net.Listener) (uint64, error) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	return b.Follow(ctx, func(context.Context) (net.Conn, error) { return ln.Accept() })
}

// follow serves one primary over conn until it is lost, then goes live if
// it can: it returns the generation won, or 0 and nil if the backup must
// wait for the next primary (nothing committed, or another candidate won
// the contest), or ctx.Err().
func (b *Backup) follow(ctx context.Context, conn net.Conn) (uint64, error) {
	err := b.Receive(ctx, conn)
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if errors.Is(err, ErrImage) {
		return 0, err // lost: the image cannot hold the committed state
	}
	st := b.Status()
	b.log.Warn("primary lost", "err", err, "committed", st.Epoch, "state", st.State)
	if st.State != format.StateCommitted {
		return 0, nil // nothing to go live with: wait for a primary
	}
	gen, err := b.GoLive(ctx)
	if errors.Is(err, witness.ErrLost) {
		b.log.Warn("another candidate won; staying backup", "err", err)
		return 0, nil
	}
	return gen, err
}
