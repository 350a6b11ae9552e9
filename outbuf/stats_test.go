package outbuf

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestStatsDelayFromInjectedClock(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustHold(t, r.b, 1, NetFrame([]byte("a")))
	r.clock.Advance(time.Millisecond)
	mustHold(t, r.b, 1, DiskWrite([]byte("bc"), 0))
	r.clock.Advance(2 * time.Millisecond)
	mustHold(t, r.b, 2, NetFrame([]byte("d")))
	s := r.b.Stats()
	if s.HeldOutputs != 3 || s.HeldBytes != 4 || s.OldestHeld != 1 || s.Delay.Count != 0 {
		t.Fatalf("before commit: %+v", s)
	}
	mustCommit(t, r.b, 1)
	s = r.b.Stats()
	if s.Released != 2 || s.ReleasedBytes != 3 || s.HeldOutputs != 1 || s.OldestHeld != 2 || !s.AnyCommitted || s.Committed != 1 {
		t.Fatalf("after commit: %+v", s)
	}
	h := s.Delay
	if h.Count != 2 || h.Max != 3*time.Millisecond {
		t.Fatalf("delay count %d max %v, want 2 and 3ms", h.Count, h.Max)
	}
	if q := h.Quantile(0.5); q < 2*time.Millisecond || q >= 4*time.Millisecond {
		t.Fatalf("p50 = %v, want within [2ms, 4ms)", q)
	}
	if q := h.Quantile(1); q != 3*time.Millisecond {
		t.Fatalf("p100 = %v, want the max 3ms", q)
	}
}

// Quantile is an upper bound within a factor of two of the true quantile.
func TestHistogramQuantileBounds(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var h Histogram
	if h.Quantile(0.5) != 0 {
		t.Fatal("empty histogram has a nonzero quantile")
	}
	var ds []time.Duration
	for range 5000 {
		d := time.Duration(1 + rng.Int64N(int64(time.Second)>>rng.IntN(30)))
		ds = append(ds, d)
		h.add(d)
	}
	slices.Sort(ds)
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 1} {
		rank := max(int(q*float64(len(ds))), 1)
		exact := ds[rank-1]
		got := h.Quantile(q)
		if got < exact || got > 2*exact {
			t.Errorf("Quantile(%v) = %v, exact %v: not within [exact, 2*exact]", q, got, exact)
		}
	}
	var z Histogram
	z.add(0)
	z.add(-time.Second) // a clock stepping back lands in bucket 0
	if z.Buckets[0] != 2 || z.Quantile(1) != 0 {
		t.Fatalf("non-positive durations: buckets[0]=%d p100=%v", z.Buckets[0], z.Quantile(1))
	}
}
