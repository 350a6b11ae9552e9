package replay

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestAckGateHolds(t *testing.T) {
	var g ackGate
	g.setGeneration(1)
	g.hold(1) // nothing before the first checkpoint
	g.receive(10)
	if a, ok := g.next(); ok {
		t.Fatalf("acked %d before any checkpoint was applied", a)
	}
	g.applied(1)
	if a, ok := g.next(); !ok || a != 10 {
		t.Fatalf("after the first checkpoint: ack %d %v, want 10", a, ok)
	}
	g.hold(15) // a sync at 15 whose checkpoint is not applied
	g.receive(20)
	if a, ok := g.next(); !ok || a != 14 {
		t.Fatalf("with a sync pending at 15: ack %d %v, want 14", a, ok)
	}
	g.hold(12) // a divergence found at 12 (below what was acked)
	if a, ok := g.next(); ok {
		t.Fatalf("acked %d after a divergence at 12", a)
	}
	g.applied(15) // the checkpoint at 15 resolves both
	if a, ok := g.next(); !ok || a != 20 {
		t.Fatalf("after the checkpoint at 15: ack %d %v, want 20", a, ok)
	}
	if _, ok := g.next(); ok {
		t.Fatal("acked the same LSN twice")
	}
}

func TestLogQueueBoundsAndEnds(t *testing.T) {
	q := newLogQueue(3 * 64)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if !q.push(ctx, item{lsn: uint64(i)}) {
			t.Fatal("push refused")
		}
	}
	pushed := make(chan bool)
	go func() { pushed <- q.push(ctx, item{lsn: 4}) }()
	select {
	case <-pushed:
		t.Fatal("a full queue took another item")
	case <-time.After(20 * time.Millisecond):
	}
	it, err := q.peek(ctx)
	if err != nil || it.lsn != 1 {
		t.Fatalf("peek: %v, %v", it, err)
	}
	q.take()
	if !<-pushed {
		t.Fatal("push failed after room was made")
	}
	q.close(errors.New("link down"))
	for want := uint64(2); want <= 4; want++ {
		it, err := q.peek(ctx)
		if err != nil || it.lsn != want {
			t.Fatalf("after close: peek %v, %v; want LSN %d", it, err, want)
		}
		q.take()
	}
	if _, err := q.peek(ctx); !errors.Is(err, errLogEnded) {
		t.Fatalf("drained closed queue: %v", err)
	}
	if q.push(ctx, item{lsn: 5}) {
		t.Fatal("a closed queue took an item")
	}
	cctx, cancel := context.WithCancel(ctx)
	q2 := newLogQueue(1 << 20)
	// The cancel comes a moment after peek began to wait, most likely:
	// the test's point is the wake-up. A peek that began after it returns
	// the same at once, so the moment decides nothing.
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	if _, err := q2.peek(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("peek after cancel: %v", err)
	}
}
