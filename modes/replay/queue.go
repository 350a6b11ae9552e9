package replay

import (
	"context"
	"errors"
	"sync"
)

// item is one thing the backup's receiver hands its replayer, in stream
// order: a log entry, or the full checkpoint that follows an EntrySync.
type item struct {
	lsn  uint64 // the entry's LSN; for a checkpoint, its sync's LSN
	e    Entry  // e.Bytes is the item's own copy
	ckpt []byte // non-nil: a checkpoint message
}

func (it *item) size() int { return 64 + len(it.e.Bytes) + len(it.ckpt) }

// errLogEnded is returned by logQueue once it is closed and drained.
var errLogEnded = errors.New("end of the replay log")

// logQueue is the backup's received-but-not-replayed log: the receiver
// pushes, the replayer takes. It holds at most max bytes (beyond that
// push waits: the receiver stops reading and TCP pushes back on the
// primary), except that one item always fits. mu protects every field.
type logQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []item
	head   int
	bytes  int
	max    int
	closed bool
	cause  error // why the stream ended
}

func newLogQueue(max int) *logQueue {
	q := &logQueue{max: max}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// push appends it, waiting for room; false if ctx ended or q is closed.
func (q *logQueue) push(ctx context.Context, it item) bool {
	stop := context.AfterFunc(ctx, q.wakeAll)
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.bytes > 0 && q.bytes+it.size() > q.max && !q.closed && ctx.Err() == nil {
		q.cond.Wait()
	}
	if q.closed || ctx.Err() != nil {
		return false
	}
	q.items = append(q.items, it)
	q.bytes += it.size()
	q.cond.Broadcast()
	return true
}

// close ends the stream with cause; what is queued can still be taken.
func (q *logQueue) close(cause error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed, q.cause = true, cause
		q.cond.Broadcast()
	}
}

func (q *logQueue) wakeAll() {
	q.mu.Lock()
	q.cond.Broadcast()
	q.mu.Unlock()
}

// peek waits for the next item and returns it without taking it. At the
// end of the stream it returns errLogEnded; if ctx ends, ctx's error.
func (q *logQueue) peek(ctx context.Context) (*item, error) {
	stop := context.AfterFunc(ctx, q.wakeAll)
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head == len(q.items) && !q.closed && ctx.Err() == nil {
		q.cond.Wait()
	}
	switch {
	case q.head < len(q.items):
		return &q.items[q.head], nil
	case q.closed:
		return nil, errLogEnded
	}
	return nil, ctx.Err()
}

// take removes the item peek returned.
func (q *logQueue) take() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.bytes -= q.items[q.head].size()
	q.items[q.head] = item{}
	q.head++
	if q.head > 1024 && q.head*2 > len(q.items) {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	q.cond.Broadcast()
}

// ended reports whether the stream ended, and why.
func (q *logQueue) ended() (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed, q.cause
}

// ackGate decides what the backup may acknowledge: the log it has
// received, except beyond a hold. A hold at LSN h stops acks at h-1 until
// a full checkpoint at or after h is applied: the backup could not
// reproduce the guest from h on (a sync whose checkpoint is not applied
// yet, a divergence, a gap in the stream). mu protects every field.
type ackGate struct {
	mu       sync.Mutex
	gen      uint64 // the generation of the log received
	received uint64
	holds    []uint64
	sent     uint64
}

func (g *ackGate) generation() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.gen
}

// setGeneration notes the generation of the log received (one per
// connection: a primary that changes generation has lost its backup).
func (g *ackGate) setGeneration(gen uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gen = gen
}

func (g *ackGate) receive(lsn uint64) {
	g.mu.Lock()
	g.received = max(g.received, lsn)
	g.mu.Unlock()
}

func (g *ackGate) hold(h uint64) {
	g.mu.Lock()
	g.holds = append(g.holds, h)
	g.mu.Unlock()
}

// applied lifts the holds a checkpoint at s resolves.
func (g *ackGate) applied(s uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	kept := g.holds[:0]
	for _, h := range g.holds {
		if h > s {
			kept = append(kept, h)
		}
	}
	g.holds = kept
}

// next returns an LSN to acknowledge beyond the last one returned, if any.
func (g *ackGate) next() (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a := g.received
	for _, h := range g.holds {
		a = min(a, h-1)
	}
	if a <= g.sent {
		return 0, false
	}
	g.sent = a
	return a, true
}
