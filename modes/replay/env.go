package replay

import (
	"sync"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Plug is the Env a Machine is built with. The engine plugs its side into
// it: a Primary its recording Env, a Backup its replaying one, and a backup
// that goes live the recording Env of the Primary it becomes. A Machine is
// built before the engine that drives it, so it holds a Plug, not the
// engine.
//
// Set is called only while no Machine method runs; the Env methods are
// called from Machine methods on the engine's goroutine.
type Plug struct {
	env machine.Env
}

// Set plugs env in.
func (p *Plug) Set(env machine.Env) { p.env = env }

// Now implements Env.
func (p *Plug) Now() uint64 { return p.env.Now() }

// ReadDisk implements Env.
func (p *Plug) ReadDisk(b []byte, off int64) error { return p.env.ReadDisk(b, off) }

// WriteDisk implements Env.
func (p *Plug) WriteDisk(b []byte, off int64) error { return p.env.WriteDisk(b, off) }

// FlushDisk implements Env.
func (p *Plug) FlushDisk() error { return p.env.FlushDisk() }

// SendFrame implements Env.
func (p *Plug) SendFrame(frame []byte) error { return p.env.SendFrame(frame) }

// Console implements Env.
func (p *Plug) Console(b []byte) { p.env.Console(b) }

// guestClock is guest time on a live machine: host monotonic time from a
// base, never below a floor (the last time the guest saw before it moved
// here, at failover). Used by one goroutine (the engine's), which also
// paces its own host-side work (pre-copy rounds) by host.
type guestClock struct {
	start time.Time
	base  uint64
	last  uint64
	// elapsed, if set, replaces the host's monotonic time since start
	// (tests script the host: export_test.go).
	elapsed func() time.Duration
}

func newGuestClock(from uint64) guestClock {
	return guestClock{start: time.Now(), base: from, last: from}
}

// host is the host's monotonic time since the clock was made.
func (c *guestClock) host() time.Duration {
	if c.elapsed != nil {
		return c.elapsed()
	}
	return time.Since(c.start)
}

// now returns the current guest time, never decreasing.
func (c *guestClock) now() uint64 {
	t := c.base + uint64(c.host())
	c.last = max(c.last, t)
	return c.last
}

// until is how long the host waits for guest time t.
func (c *guestClock) until(t uint64) time.Duration {
	return time.Duration(t) - time.Duration(c.now())
}

// rxQueue holds frames received from the network until the primary's next
// boundary delivers them. Safe for concurrent use.
type rxQueue struct {
	mu     sync.Mutex
	frames [][]byte
	max    int
}

// push queues a copy of frame, or drops it when the queue is full.
func (q *rxQueue) push(frame []byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) >= q.max {
		return false
	}
	q.frames = append(q.frames, append([]byte(nil), frame...))
	return true
}

// take removes and returns every queued frame.
func (q *rxQueue) take() [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	f := q.frames
	q.frames = nil
	return f
}
