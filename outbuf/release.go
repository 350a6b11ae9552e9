package outbuf

import (
	"errors"
	"fmt"
	"time"
)

// releaseCommitted is one release pass: while the oldest held outputs are
// committed, check the fence, then hand them to their sinks in order. It
// returns nil when nothing committed is left, or the error that failed the
// buffer.
//
// The fence is checked once per batch (every committed output found by one
// look at the queue), not per output: one check per ack is what the witness
// can afford, and an output is never released without a check that began
// after its commit.
func (b *Buffer) releaseCommitted() error {
	b.relMu.Lock()
	defer b.relMu.Unlock()
	for {
		b.mu.Lock()
		if b.failed != nil {
			err := b.failed
			b.mu.Unlock()
			return err
		}
		// Only this pass (holding relMu) removes from the queue, so the
		// committed prefix stays put after mu is released.
		b.batch = b.batch[:0]
		for _, e := range b.queue {
			if !b.committedLocked(e.pos) {
				break
			}
			b.batch = append(b.batch, e)
		}
		b.mu.Unlock()
		if len(b.batch) == 0 {
			return nil
		}

		last := b.batch[len(b.batch)-1].pos
		if err := b.env.Fence.Check(b.env.Generation); err != nil {
			clear(b.batch)
			if isTemporary(err) {
				b.log.Info("release deferred: the fence may pass later", "outputs", len(b.batch), "through", last, "err", err)
				return nil
			}
			err = fmt.Errorf("outbuf: release of %d outputs up to position %d at generation %d: %w: %w",
				len(b.batch), last, b.env.Generation, ErrFenced, err)
			return b.fail(err)
		}
		for i, e := range b.batch {
			if err := b.deliver(e); err != nil {
				return b.fail(fmt.Errorf("outbuf: release %s at position %d (%d of %d in batch): %w",
					e.out.Kind, e.pos, i+1, len(b.batch), err))
			}
		}
		clear(b.batch)
	}
}

// isTemporary says whether a fence's refusal may pass later (see Fence).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// deliver hands one output to its sink and, on success, removes it from the
// queue (and overlay). Precondition: relMu is held and e is the queue's head.
func (b *Buffer) deliver(e *entry) error {
	switch e.out.Kind {
	case KindNetFrame:
		if err := b.env.Net.SendFrame(e.out.Data); err != nil {
			return fmt.Errorf("send frame of %d bytes: %w", len(e.out.Data), err)
		}
		now := b.env.Clock.Now()
		b.mu.Lock()
		b.popLocked(e, now)
		b.mu.Unlock()
	case KindDiskWrite:
		// diskMu keeps ReadAt from reading the disk before this write and
		// the overlay after its removal.
		b.diskMu.Lock()
		defer b.diskMu.Unlock()
		if _, err := b.env.Disk.WriteAt(e.out.Data, e.out.Off); err != nil {
			return fmt.Errorf("write %d bytes at offset %d: %w", len(e.out.Data), e.out.Off, err)
		}
		now := b.env.Clock.Now()
		b.mu.Lock()
		b.overlay.remove(e)
		b.popLocked(e, now)
		b.mu.Unlock()
	default:
		panic(fmt.Sprintf("outbuf: held output of %s", e.out.Kind))
	}
	return nil
}

// popLocked removes the head e, released at now, counts it and lets
// waiters in.
func (b *Buffer) popLocked(e *entry, now time.Time) {
	if len(b.queue) == 0 || b.queue[0] != e {
		panic(fmt.Sprintf("outbuf: released output at position %d is not the queue's head", e.pos))
	}
	b.queue[0] = nil
	b.queue = b.queue[1:]
	size := int64(len(e.out.Data))
	b.heldBytes -= size
	b.released++
	b.releasedBytes += uint64(size)
	b.delay.add(now.Sub(e.heldAt))
	putData(e.out.Data)
	e.out.Data = nil
	b.grantLocked()
}

// fail fails the buffer with err, logs it and returns the buffer's failure.
func (b *Buffer) fail(err error) error {
	b.mu.Lock()
	b.failLocked(err)
	failed := b.failed
	b.mu.Unlock()
	b.log.Error("output release failed; buffer halts releasing", "err", err)
	return failed
}
