package checkpoint

import (
	"strings"
	"testing"
	"time"
)

// The status line shows the pause broken down and the dirty pages per
// epoch; Pauses returns the pauses of a window, in order, across the ring's
// wrap.
func TestStatsPauses(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := newStats(t0)
	for i := 0; i < pauseWindow+10; i++ {
		ms := time.Duration(i%10+1) * time.Millisecond
		s.epoch(Pause{At: t0.Add(time.Duration(i) * time.Second), Dirty: 100 + i%10,
			Stop: ms, Harvest: 2 * ms, Copy: 3 * ms, State: 4 * ms, Resume: 5 * ms}, 25*time.Millisecond)
	}
	got := s.Pauses(t0.Add(pauseWindow*time.Second), t0.Add((pauseWindow+5)*time.Second))
	if len(got) != 5 {
		t.Fatalf("%d pauses in a window of 5 s, want 5", len(got))
	}
	for i, p := range got {
		if want := t0.Add(time.Duration(pauseWindow+i) * time.Second); !p.At.Equal(want) {
			t.Fatalf("pause %d began at %v, want %v", i, p.At, want)
		}
	}
	if n := len(s.Pauses(t0, t0.Add(10*time.Second))); n != 0 {
		t.Fatalf("%d of the first 10 pauses, which the ring no longer holds", n)
	}
	m := PauseMedian(s.Pauses(t0, t0.Add(100*time.Hour)))
	if m.Stop != 5*time.Millisecond || m.Resume != 25*time.Millisecond || m.Dirty != 104 {
		t.Fatalf("medians %+v", m)
	}
	line := s.Line(t0.Add(2*time.Hour), "p50 0s p99 0s")
	for _, want := range []string{"pause p50 ", "stop 5ms", "harvest 10ms", "copy 15ms", "state 20ms", "resume 25ms", "dirty p50 104 pages"} {
		if !strings.Contains(line, want) {
			t.Errorf("status line %q lacks %q", line, want)
		}
	}
}

// Quantiles are by nearest rank: with fewer than 100 pauses p99 is the
// longest (the first epoch after a sync often is), and the median of two
// is the shorter, for the whole pause and its parts alike.
func TestPauseQuantiles(t *testing.T) {
	var pauses []Pause
	for i := 29; i >= 1; i-- {
		pauses = append(pauses, Pause{Dirty: i, Copy: time.Duration(i) * time.Millisecond})
	}
	if got := PauseQuantile(pauses, 0.99); got != 29*time.Millisecond {
		t.Errorf("p99 of 1..29 ms: %v, want 29ms", got)
	}
	if got := PauseQuantile(pauses, 0.5); got != 15*time.Millisecond {
		t.Errorf("p50 of 1..29 ms: %v, want 15ms", got)
	}
	two := []Pause{{Dirty: 2, Copy: 600 * time.Millisecond}, {Dirty: 1, Copy: 4 * time.Millisecond}}
	if p50, p99, m := PauseQuantile(two, 0.5), PauseQuantile(two, 0.99), PauseMedian(two); p50 != 4*time.Millisecond || p99 != 600*time.Millisecond || m.Copy != p50 || m.Dirty != 1 {
		t.Errorf("of 4 and 600 ms: p50 %v, p99 %v, median parts %v and %d pages; want 4ms, 600ms, 4ms, 1", p50, p99, m.Copy, m.Dirty)
	}
}
