package outbuf

import (
	"context"
	"errors"
	"testing"
)

func TestHoldBlocksWhenFullAndResumesAfterCommit(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		size int
	}{
		{"by bytes", Config{MaxBytes: 40, MaxOutputs: 100}, 20},
		{"by count", Config{MaxBytes: 1 << 20, MaxOutputs: 2}, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, c.cfg)
			mustHold(t, r.b, 1, NetFrame(tagged(1, 0, 0, c.size)))
			mustHold(t, r.b, 2, NetFrame(tagged(2, 0, 1, c.size)))
			third := holdAsync(context.Background(), r.b, 3, NetFrame(tagged(3, 0, 2, c.size)))
			waitWaiting(t, r.b, 1)
			assertBlocked(t, third, "third Hold")
			mustCommit(t, r.b, 1)
			if err := <-third; err != nil {
				t.Fatalf("third Hold after room was made: %v", err)
			}
			if s := r.b.Stats(); s.HeldOutputs != 2 || s.Waiting != 0 {
				t.Fatalf("held %d waiting %d, want 2 and 0", s.HeldOutputs, s.Waiting)
			}
			mustCommit(t, r.b, 3)
			got := r.rec.snapshot()
			if len(got) != 3 {
				t.Fatalf("released %d, want 3", len(got))
			}
			for i, g := range got {
				if _, _, seq := untag(g.data); seq != uint32(i) {
					t.Fatalf("release %d has sequence %d", i, seq)
				}
			}
		})
	}
}

// Blocked Holds are served first come first served: a small output that
// would fit does not overtake a large one waiting before it.
func TestWaitersAreFIFO(t *testing.T) {
	r := newRig(t, Config{MaxBytes: 100, MaxOutputs: 100})
	mustHold(t, r.b, 1, NetFrame(tagged(1, 0, 0, 60)))
	big := holdAsync(context.Background(), r.b, 2, NetFrame(tagged(2, 0, 1, 80)))
	waitWaiting(t, r.b, 1)
	small := holdAsync(context.Background(), r.b, 2, NetFrame(tagged(2, 0, 2, 10)))
	waitWaiting(t, r.b, 2)
	assertBlocked(t, small, "small Hold behind a large waiter")
	mustCommit(t, r.b, 1)
	if err := <-big; err != nil {
		t.Fatal(err)
	}
	if err := <-small; err != nil {
		t.Fatal(err)
	}
	mustCommit(t, r.b, 2)
	got := r.rec.snapshot()
	if len(got) != 3 {
		t.Fatalf("released %d, want 3", len(got))
	}
	for i, g := range got {
		if _, _, seq := untag(g.data); seq != uint32(i) {
			t.Fatalf("release %d has sequence %d: a waiter was overtaken", i, seq)
		}
	}
}

func TestCancelUnblocksHold(t *testing.T) {
	r := newRig(t, Config{MaxBytes: 100, MaxOutputs: 100})
	mustHold(t, r.b, 1, NetFrame(tagged(1, 0, 0, 60)))
	ctx, cancel := context.WithCancel(context.Background())
	big := holdAsync(ctx, r.b, 2, NetFrame(tagged(2, 0, 1, 80)))
	waitWaiting(t, r.b, 1)
	small := holdAsync(context.Background(), r.b, 2, NetFrame(tagged(2, 0, 2, 10)))
	waitWaiting(t, r.b, 2)
	cancel()
	if err := <-big; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Hold = %v, want context.Canceled", err)
	}
	// The head waiter gave up, so the one behind it fits now.
	if err := <-small; err != nil {
		t.Fatalf("Hold behind a cancelled waiter: %v", err)
	}
	mustCommit(t, r.b, 2)
	got := r.rec.snapshot()
	if len(got) != 2 {
		t.Fatalf("released %d outputs, want 2: the cancelled one must not be held", len(got))
	}
	if _, _, seq := untag(got[1].data); seq != 2 {
		t.Fatalf("second release has sequence %d, want 2", seq)
	}
}

func TestDropRefusesWaiters(t *testing.T) {
	r := newRig(t, Config{MaxBytes: 10, MaxOutputs: 100})
	mustHold(t, r.b, 1, NetFrame(make([]byte, 10)))
	w := holdAsync(context.Background(), r.b, 1, NetFrame(make([]byte, 5)))
	waitWaiting(t, r.b, 1)
	r.b.Drop()
	if err := <-w; !errors.Is(err, ErrDropped) {
		t.Fatalf("waiting Hold after Drop = %v, want ErrDropped", err)
	}
	if s := r.b.Stats(); s.Dropped != 2 || s.HeldOutputs != 0 {
		t.Fatalf("dropped %d held %d, want 2 and 0", s.Dropped, s.HeldOutputs)
	}
}
