package checkpoint

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// Stats is what the status line shows. Safe for concurrent use.
type Stats struct {
	mu sync.Mutex
	// pauses holds the last pause durations, for percentiles.
	pauses    []time.Duration
	next      int
	Epochs    uint64
	Acked     uint64
	Shipped   uint64 // checkpoint bytes written
	Raw       uint64 // bytes of the dirty pages they carried
	Dirty     uint64 // dirty pages captured
	Resyncs   uint64 // full syncs the backup asked for
	EpochLen  time.Duration
	started   time.Time
	lastEpoch uint64
	lastTime  time.Time
}

const pauseWindow = 1024

func newStats(now time.Time) *Stats {
	return &Stats{started: now, lastTime: now, pauses: make([]time.Duration, 0, pauseWindow)}
}

func (s *Stats) epoch(pause time.Duration, dirty uint64, epochLen time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pauses) < pauseWindow {
		s.pauses = append(s.pauses, pause)
	} else {
		s.pauses[s.next] = pause
		s.next = (s.next + 1) % pauseWindow
	}
	s.Epochs++
	s.Dirty += dirty
	s.EpochLen = epochLen
}

func (s *Stats) shipped(wire, raw uint64) {
	s.mu.Lock()
	s.Shipped += wire
	s.Raw += raw
	s.mu.Unlock()
}

func (s *Stats) resynced() {
	s.mu.Lock()
	s.Resyncs++
	s.mu.Unlock()
}

func (s *Stats) acked(epoch uint64) {
	s.mu.Lock()
	s.Acked = max(s.Acked, epoch)
	s.mu.Unlock()
}

// Line renders the status line: epochs/s since the last call, pause
// p50/p99, MB/s shipped, compression ratio, and outDelay as given.
func (s *Stats) Line(now time.Time, outDelay string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := slices.Clone(s.pauses)
	slices.Sort(p)
	pct := func(q float64) time.Duration {
		if len(p) == 0 {
			return 0
		}
		return p[int(q*float64(len(p)-1))]
	}
	elapsed := now.Sub(s.lastTime).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(s.Epochs-s.lastEpoch) / elapsed
	}
	s.lastEpoch, s.lastTime = s.Epochs, now
	ratio := 0.0
	if s.Shipped > 0 {
		ratio = float64(s.Raw) / float64(s.Shipped)
	}
	mbps := float64(s.Shipped) / 1e6 / now.Sub(s.started).Seconds()
	return fmt.Sprintf("epoch %d (acked %d, every %v) %.0f/s  pause p50 %v p99 %v  shipped %.1f MB/s  ratio %.1fx  output delay %s",
		s.Epochs, s.Acked, s.EpochLen.Round(time.Millisecond), rate, pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond),
		mbps, ratio, outDelay)
}
