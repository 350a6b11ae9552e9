package checkpoint

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// Pause is one checkpoint's pause of the guest, in its parts: stopping
// every vCPU and device, harvesting the dirty log, copying the dirty pages
// aside, capturing the machine state (and the disk's log), and resuming.
// The parts follow one another on the epoch loop, and add up to the pause.
// On a machine that captures its vCPUs' state on their own threads as they
// stop (machine.PauseSaver, KVM), that capture runs alongside the harvest
// and the copy, and State is only what the pause still waited for after
// them.
type Pause struct {
	// At is when the pause began.
	At time.Time
	// Dirty is the number of pages captured.
	Dirty int
	// Deferred says the pages were write-protected during the pause (its
	// Copy) and copied after it (Config.CopyAfterResume).
	Deferred                           bool
	Stop, Harvest, Copy, State, Resume time.Duration
}

// Total is the whole pause, from stopping the guest to its running again.
func (p Pause) Total() time.Duration { return p.Stop + p.Harvest + p.Copy + p.State + p.Resume }

// Stats is what the status line shows. Safe for concurrent use.
type Stats struct {
	mu sync.Mutex
	// pauses holds the last pauseWindow pauses, a ring from next.
	pauses  []Pause
	next    int
	Epochs  uint64
	Acked   uint64
	Shipped uint64 // checkpoint bytes written
	Raw     uint64 // bytes of the dirty pages they carried
	Dirty   uint64 // dirty pages captured
	Resyncs uint64 // full syncs the backup asked for
	// Deferred counts the epochs whose pages were copied after the guest
	// resumed, Waited the guest's writes that waited for such a copy.
	Deferred, Waited uint64
	EpochLen         time.Duration
	started          time.Time
	lastEpoch        uint64
	lastTime         time.Time
	// observe, if set, is told every pause (SetObserver).
	observe func(Pause)
}

const pauseWindow = 1024

func newStats(now time.Time) *Stats {
	return &Stats{started: now, lastTime: now, pauses: make([]Pause, 0, pauseWindow)}
}

// SetObserver has observe told every pause from now on, on the epoch
// loop's goroutine, after the pause (metrics keep every one; the status
// line only the last 1024). observe must be quick and must not call s.
func (s *Stats) SetObserver(observe func(Pause)) {
	s.mu.Lock()
	s.observe = observe
	s.mu.Unlock()
}

func (s *Stats) epoch(p Pause, epochLen time.Duration) {
	s.mu.Lock()
	observe := s.observe
	defer func() {
		s.mu.Unlock()
		if observe != nil {
			observe(p)
		}
	}()
	if len(s.pauses) < pauseWindow {
		s.pauses = append(s.pauses, p)
	} else {
		s.pauses[s.next] = p
		s.next = (s.next + 1) % pauseWindow
	}
	s.Epochs++
	s.Dirty += uint64(p.Dirty)
	if p.Deferred {
		s.Deferred++
	}
	s.EpochLen = epochLen
}

func (s *Stats) shipped(wire, raw uint64) {
	s.mu.Lock()
	s.Shipped += wire
	s.Raw += raw
	s.mu.Unlock()
}

func (s *Stats) waited(writes uint64) {
	s.mu.Lock()
	s.Waited += writes
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

// Counters returns the counters at one instant: epochs taken and
// acknowledged, checkpoint bytes shipped and the page bytes they carried,
// pages captured.
func (s *Stats) Counters() (epochs, acked, shipped, raw, dirty uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Epochs, s.Acked, s.Shipped, s.Raw, s.Dirty
}

// Deferrals are the epochs whose pages were copied after the guest
// resumed, and the guest's writes that waited for such a copy.
func (s *Stats) Deferrals() (epochs, waited uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Deferred, s.Waited
}

// ResyncCount is the number of full syncs the backup asked for.
func (s *Stats) ResyncCount() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Resyncs
}

// Pauses returns the pauses (of the last 1024) that began in [from, to),
// oldest first.
func (s *Stats) Pauses(from, to time.Time) []Pause {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Pause
	for i := range s.pauses {
		p := s.pauses[(s.next+i)%len(s.pauses)]
		if !p.At.Before(from) && p.At.Before(to) {
			out = append(out, p)
		}
	}
	return out
}

// PauseMedian is the median of each part of pauses, and of the whole (the
// parts' medians need not add up to it): the nearest-rank median, so of an
// even count the lower of the middle two, as PauseQuantile(pauses, 0.5).
func PauseMedian(pauses []Pause) Pause {
	var m Pause
	if len(pauses) == 0 {
		return m
	}
	med := func(part func(Pause) time.Duration) time.Duration {
		ds := make([]time.Duration, len(pauses))
		for i, p := range pauses {
			ds[i] = part(p)
		}
		return nearestRank(ds, 0.5)
	}
	m.Stop = med(func(p Pause) time.Duration { return p.Stop })
	m.Harvest = med(func(p Pause) time.Duration { return p.Harvest })
	m.Copy = med(func(p Pause) time.Duration { return p.Copy })
	m.State = med(func(p Pause) time.Duration { return p.State })
	m.Resume = med(func(p Pause) time.Duration { return p.Resume })
	dirty := make([]int, len(pauses))
	for i, p := range pauses {
		dirty[i] = p.Dirty
	}
	m.Dirty = nearestRank(dirty, 0.5)
	return m
}

// PauseQuantile is the q-quantile (0 to 1) of the whole pauses, by nearest
// rank: the smallest pause no shorter than a q share of them. Of fewer
// than 100 pauses, p99 is the longest.
func PauseQuantile(pauses []Pause, q float64) time.Duration {
	if len(pauses) == 0 {
		return 0
	}
	ds := make([]time.Duration, len(pauses))
	for i, p := range pauses {
		ds[i] = p.Total()
	}
	return nearestRank(ds, q)
}

// nearestRank sorts xs (not empty) and returns its q-quantile by nearest
// rank: the ceil(q·n)-th smallest, the first for q 0.
func nearestRank[T cmp.Ordered](xs []T, q float64) T {
	slices.Sort(xs)
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// Line renders the status line: epochs/s since the last call, the pause's
// p50 and p99 and the p50 of each of its parts and of the dirty pages per
// epoch (over the last 1024 epochs), the epochs copied after resuming, MB/s shipped, compression ratio, and
// outDelay as given.
func (s *Stats) Line(now time.Time, outDelay string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
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
	us := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	m := PauseMedian(s.pauses)
	deferred := ""
	if s.Deferred > 0 {
		deferred = fmt.Sprintf("  copied after resume %d epochs (%d writes waited)", s.Deferred, s.Waited)
	}
	return fmt.Sprintf("epoch %d (acked %d, every %v) %.0f/s  pause p50 %v p99 %v (p50 stop %v harvest %v copy %v state %v resume %v)  dirty p50 %d pages%s  shipped %.1f MB/s  ratio %.1fx  output delay %s",
		s.Epochs, s.Acked, s.EpochLen.Round(time.Millisecond), rate,
		us(PauseQuantile(s.pauses, 0.5)), us(PauseQuantile(s.pauses, 0.99)),
		us(m.Stop), us(m.Harvest), us(m.Copy), us(m.State), us(m.Resume), m.Dirty, deferred,
		mbps, ratio, outDelay)
}
