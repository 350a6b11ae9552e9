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
