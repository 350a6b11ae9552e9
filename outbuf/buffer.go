package outbuf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

var (
	// ErrTooLarge: the output is larger than Config.MaxBytes and could never
	// be held.
	ErrTooLarge = errors.New("output larger than the buffer")
	// ErrPositionRegressed: Hold was given a position lower than one already
	// given. Positions only grow; this is a bug in the caller.
	ErrPositionRegressed = errors.New("position lower than an earlier hold")
	// ErrNoSink: the output's kind has no sink in this buffer's Env.
	ErrNoSink = errors.New("no sink for this kind of output")
	// ErrDropped: the output was waiting for room when Drop discarded it.
	ErrDropped = errors.New("dropped while waiting for room")
	// ErrFenced: the fence refused the buffer's generation; the buffer is
	// failed and releases nothing more.
	ErrFenced = errors.New("fence refused release")
)

// Buffer holds outputs until they are committed. Hold is called from device
// code on any number of vCPU threads; Commit from the ack reader; Drop from
// the failover path; ReadAt from the disk device. All methods are safe for
// concurrent use; see the package comment for the locking.
type Buffer struct {
	cfg Config
	env Env
	log *slog.Logger

	// relMu serialises release passes and Drop; it protects batch.
	relMu sync.Mutex
	// batch is the release pass's scratch list, reused between passes.
	batch []*entry

	// diskMu orders disk releases against ReadAt (see the package comment).
	diskMu sync.RWMutex

	// mu protects every field below.
	mu sync.Mutex
	// queue holds the outputs not yet released, in emission order; its
	// positions never decrease. Only a release pass or Drop removes from it.
	queue []*entry
	// overlay indexes the disk writes in queue.
	overlay overlay
	// heldBytes and queue's length are bounded by cfg.
	heldBytes int64
	// waiters are Holds blocked for room, first come first served.
	waiters []*waiter
	// lastPos is the highest position given to Hold (valid if anyHold).
	lastPos uint64
	anyHold bool
	// committed is the highest committed position (valid if anyCommit).
	committed uint64
	anyCommit bool
	// failed, once set, is returned by every later Hold, Commit and Err.
	failed error
	// stats counts what has happened so far.
	released, releasedBytes, dropped uint64
	delay                            Histogram
}

// entry is one held output.
type entry struct {
	pos    uint64
	out    Output // out.Data is the buffer's own copy
	heldAt time.Time
}

// waiter is a Hold blocked for room. Once done is set (under mu) and ready is
// closed, err says whether the output was queued (nil) or refused.
type waiter struct {
	e     *entry
	ready chan struct{}
	done  bool
	err   error
}

// New returns an empty Buffer that releases under env.Generation.
func New(cfg Config, env Env) (*Buffer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("outbuf: new buffer: %w", err)
	}
	if env.Fence == nil {
		return nil, errors.New("outbuf: new buffer: Env.Fence is required: every release is fenced")
	}
	if env.Clock == nil {
		return nil, errors.New("outbuf: new buffer: Env.Clock is required")
	}
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Buffer{
		cfg:     cfg,
		env:     env,
		log:     log.With("component", "outbuf", "generation", env.Generation),
		overlay: newOverlay(),
	}, nil
}

// Hold queues out, emitted at pos, until Commit(p) with p >= pos. It copies
// out.Data, so the caller may reuse it on return.
//
// Positions given to Hold must never decrease; a lower one than before
// returns ErrPositionRegressed. If out does not fit within the Config bounds,
// Hold blocks until releases or Drop make room, or ctx ends (then it returns
// ctx's error and out is not held); a blocked Hold's copy is outside the
// bounds, so memory beyond them is at most one output per blocked caller.
// A caller that blocks here at the current epoch's position stops that
// epoch's checkpoint from being taken; the pause barrier must be able to
// cancel ctx, and the device should retry the output after resuming.
//
// If pos is already committed (replay mode: the ack overtook the device),
// Hold runs a release pass itself, on the calling goroutine, so the output
// does not wait for another ack. Errors of that pass fail the buffer and are
// returned by later calls, not by this one: the output was held.
func (b *Buffer) Hold(ctx context.Context, pos uint64, out Output) error {
	if err := b.check(pos, out); err != nil {
		return err
	}
	e := &entry{pos: pos, out: Output{Kind: out.Kind, Data: getData(out.Data), Off: out.Off}, heldAt: b.env.Clock.Now()}
	size := int64(len(e.out.Data))

	b.mu.Lock()
	if b.failed != nil {
		err := b.failed
		b.mu.Unlock()
		putData(e.out.Data)
		return fmt.Errorf("outbuf: hold %s at position %d: %w", out.Kind, pos, err)
	}
	if b.anyHold && pos < b.lastPos {
		last := b.lastPos
		b.mu.Unlock()
		putData(e.out.Data)
		return fmt.Errorf("outbuf: hold %s at position %d after position %d: %w", out.Kind, pos, last, ErrPositionRegressed)
	}
	b.lastPos, b.anyHold = pos, true
	if len(b.waiters) == 0 && b.fitsLocked(size) {
		b.enqueueLocked(e)
		release := b.committedLocked(pos)
		b.mu.Unlock()
		if release {
			_ = b.releaseCommitted() // failure is sticky; see the doc comment
		}
		return nil
	}
	w := &waiter{e: e, ready: make(chan struct{})}
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()

	select {
	case <-w.ready:
	case <-ctx.Done():
		b.mu.Lock()
		if !w.done {
			b.removeWaiterLocked(w)
			b.mu.Unlock()
			putData(e.out.Data)
			return fmt.Errorf("outbuf: hold %s of %d bytes at position %d, waiting for room: %w", out.Kind, size, pos, ctx.Err())
		}
		b.mu.Unlock() // queued or refused just as ctx ended: report that
	}
	if w.err != nil {
		putData(e.out.Data) // refused: never queued, ours alone
		return fmt.Errorf("outbuf: hold %s at position %d: %w", out.Kind, pos, w.err)
	}
	b.mu.Lock()
	release := b.committedLocked(pos)
	b.mu.Unlock()
	if release {
		_ = b.releaseCommitted()
	}
	return nil
}

// check refuses outputs this buffer could never hold.
func (b *Buffer) check(pos uint64, out Output) error {
	if err := out.validate(); err != nil {
		return fmt.Errorf("outbuf: hold at position %d: %w", pos, err)
	}
	if size := int64(len(out.Data)); size > b.cfg.MaxBytes {
		return fmt.Errorf("outbuf: hold %s of %d bytes at position %d (MaxBytes %d): %w", out.Kind, size, pos, b.cfg.MaxBytes, ErrTooLarge)
	}
	if (out.Kind == KindNetFrame && b.env.Net == nil) || (out.Kind == KindDiskWrite && b.env.Disk == nil) {
		return fmt.Errorf("outbuf: hold %s at position %d: %w", out.Kind, pos, ErrNoSink)
	}
	return nil
}

// Commit records that the backup has acknowledged every position up to pos
// and releases, in emission order, every held output at or below it. A pos
// lower than one already committed does not lower the committed position; the
// call still runs a release pass (which finds nothing new unless a Hold is
// racing it) and is otherwise a no-op.
//
// Commit returns once those outputs are in their sinks, or with the error
// that failed the buffer (a fence refusal wrapping ErrFenced, or a sink
// error); after a failure every Commit returns that error.
func (b *Buffer) Commit(pos uint64) error {
	b.mu.Lock()
	if !b.anyCommit || pos > b.committed {
		b.committed, b.anyCommit = pos, true
	}
	b.mu.Unlock()
	return b.releaseCommitted()
}

// Drop discards every output not yet released, including those of Holds
// blocked for room (they return ErrDropped). The failover path calls it on
// the old primary: the backup that went live never had these outputs, so
// they must never leave. A release pass in progress finishes first (its
// outputs were committed). The buffer stays usable, with its committed and
// last held positions unchanged, and a failed buffer stays failed.
func (b *Buffer) Drop() {
	b.relMu.Lock()
	defer b.relMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.queue {
		b.dropped++
		b.heldBytes -= int64(len(e.out.Data))
		putData(e.out.Data)
		b.queue[i] = nil
	}
	b.queue = b.queue[:0]
	b.overlay.clear()
	for _, w := range b.waiters {
		b.dropped++
		w.done, w.err = true, ErrDropped
		close(w.ready)
	}
	b.waiters = nil
}

// HeldWrite is a disk write held and not yet released, at position Pos.
type HeldWrite struct {
	Pos  uint64
	Off  int64
	Data []byte
}

// HeldDiskWrites returns copies of the disk writes held and not yet
// released, in emission order. A release pass in flight finishes first, so
// every write held before the call is either returned or already handed
// to the disk's WriteAt (replay mode's full checkpoint carries these: the
// guest state it ships has seen them complete). Holds blocked for room are
// not held yet and not returned.
func (b *Buffer) HeldDiskWrites() []HeldWrite {
	b.relMu.Lock()
	defer b.relMu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	var ws []HeldWrite
	for _, e := range b.queue {
		if e.out.Kind == KindDiskWrite {
			ws = append(ws, HeldWrite{Pos: e.pos, Off: e.out.Off, Data: bytes.Clone(e.out.Data)})
		}
	}
	return ws
}

// Err returns the error that failed the buffer, or nil.
func (b *Buffer) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed
}

// fitsLocked says whether size more bytes and one more output fit.
func (b *Buffer) fitsLocked(size int64) bool {
	return b.heldBytes+size <= b.cfg.MaxBytes && len(b.queue) < b.cfg.MaxOutputs
}

// committedLocked says whether pos has been committed.
func (b *Buffer) committedLocked(pos uint64) bool {
	return b.anyCommit && pos <= b.committed
}

// enqueueLocked appends e to the queue and, for a disk write, the overlay.
func (b *Buffer) enqueueLocked(e *entry) {
	b.queue = append(b.queue, e)
	b.heldBytes += int64(len(e.out.Data))
	if e.out.Kind == KindDiskWrite {
		b.overlay.add(e)
	}
}

// grantLocked queues waiters, oldest first, while they fit. It stops at the
// first that does not, so a large output is not starved by small ones.
func (b *Buffer) grantLocked() {
	n := 0
	for _, w := range b.waiters {
		if !b.fitsLocked(int64(len(w.e.out.Data))) {
			break
		}
		b.enqueueLocked(w.e)
		w.done = true
		close(w.ready)
		n++
	}
	if n > 0 {
		clear(b.waiters[:n])
		b.waiters = b.waiters[n:]
	}
}

// removeWaiterLocked forgets a waiter whose context ended; those behind it
// may now fit.
func (b *Buffer) removeWaiterLocked(w *waiter) {
	for i, x := range b.waiters {
		if x == w {
			b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
			break
		}
	}
	b.grantLocked()
}

// failLocked fails the buffer with err (once) and refuses every waiter.
func (b *Buffer) failLocked(err error) {
	if b.failed != nil {
		return
	}
	b.failed = err
	for _, w := range b.waiters {
		w.done, w.err = true, err
		close(w.ready)
	}
	b.waiters = nil
}
