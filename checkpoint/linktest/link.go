// Package linktest is the in-memory twin of the network between a primary
// and its backup, for tests: a Link carries connections — in memory (Pipe),
// or between loopback TCP sockets (Proxy, for a node, which dials and
// listens on TCP itself) — and the test injects the network's faults
// through it, never by sleeping:
//
//   - Cut resets every connection on the link: both ends see an error
//     (ECONNRESET), and what was still in flight is lost. Connections made
//     after it work: the path is back, the connections are not.
//   - Dark (one direction) and Partition (both) stop delivery: writes are
//     taken while the buffers hold them, nothing arrives, nothing fails —
//     the silence a peer can only notice by its heartbeats. Heal delivers
//     what was held, in order, as TCP retransmits once a path comes back.
//   - SetFilter puts a function in one direction's byte path, to delay,
//     hold, drop, corrupt or edit messages (Delay is one).
//
// Delivered counts the bytes that reached each side.
package linktest

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Dir is a direction on a link.
type Dir int

const (
	// Up is from the end that connects (Pipe's first end, a proxy's
	// client: a primary) to the end that accepts (a backup): checkpoints,
	// the replay log.
	Up Dir = iota
	// Down is back: acks, heartbeats, resync requests.
	Down
)

func (d Dir) String() string {
	if d == Up {
		return "up"
	}
	return "down"
}

// Filter carries one direction of a connection: it reads what the sender
// wrote from from and writes what the receiver is to get to to, and
// returns when either fails (what it returns on decides how the
// connection ends: see Link). nil copies everything.
type Filter func(from io.Reader, to io.Writer)

// DefaultBuffer is how many bytes each direction of a Pipe's connection
// holds in flight at each of its two ends (a kernel's socket buffers).
const DefaultBuffer = 1 << 20

// Link is a network path between a primary and a backup. The zero value
// is not ready: use New. Safe for concurrent use.
type Link struct {
	// Buffer is Pipe's per-direction buffer at each end (DefaultBuffer if
	// 0). Set before the first Pipe.
	Buffer int

	mu      sync.Mutex
	changed *sync.Cond // on mu: darkness or a cut changed
	// mu protects what follows.
	dark    [2]bool
	filters [2]Filter
	joints  map[*joint]struct{}
	made    int

	delivered [2]atomic.Uint64
}

// New returns a link with nothing wrong with it.
func New() *Link {
	l := &Link{joints: map[*joint]struct{}{}}
	l.changed = sync.NewCond(&l.mu)
	return l
}

// SetFilter puts f in direction d of the connections made from now on (nil:
// a plain copy).
func (l *Link) SetFilter(d Dir, f Filter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.filters[d] = f
}

// Cut resets every connection on the link now: both ends read what had
// reached them, then ECONNRESET; their writes fail. What was in flight is
// lost. Later connections work.
func (l *Link) Cut() {
	l.mu.Lock()
	var js []*joint
	for j := range l.joints {
		j.cut = true
		js = append(js, j)
	}
	l.changed.Broadcast()
	l.mu.Unlock()
	for _, j := range js {
		j.near.reset()
		j.far.reset()
	}
}

// Dark stops delivery in direction d (see the package comment) until Heal.
func (l *Link) Dark(d Dir) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dark[d] = true
}

// Partition is Dark both ways.
func (l *Link) Partition() {
	l.Dark(Up)
	l.Dark(Down)
}

// Heal ends Dark and Partition: what was held is delivered, in order.
func (l *Link) Heal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dark = [2]bool{}
	l.changed.Broadcast()
}

// Delivered is how many bytes have reached the receiving side in
// direction d, over every connection.
func (l *Link) Delivered(d Dir) uint64 { return l.delivered[d].Load() }

// Connections is how many connections were made on the link.
func (l *Link) Connections() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.made
}

// Pipe returns the two ends of a new in-memory connection over the link:
// the one that connects (a primary's), and the one that accepts.
func (l *Link) Pipe() (net.Conn, net.Conn) {
	size := l.Buffer
	if size == 0 {
		size = DefaultBuffer
	}
	dialer, near := newPair(size, "primary", "link")
	far, acceptor := newPair(size, "link", "backup")
	l.join(pipeEnd{near}, pipeEnd{far})
	return dialer, acceptor
}

// Proxy listens on a loopback TCP port and joins each connection it
// accepts to a new one to target, over the link; it returns the address
// to dial instead of target. It stops when the test ends. A client whose
// connection could not be joined (target not listening) reads EOF.
func (l *Link) Proxy(t testing.TB, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ln.Close()
		l.Cut()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				s, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				l.join(tcpEnd{c.(*net.TCPConn)}, tcpEnd{s.(*net.TCPConn)})
			}()
		}
	}()
	return ln.Addr().String()
}

// end is what the link holds of each side of a connection: the proxy's
// TCP socket, or the inner end of an in-memory pair.
type end interface {
	io.ReadWriter
	CloseWrite() error
	reset()
}

type pipeEnd struct{ *Conn }

func (e pipeEnd) reset() { e.Reset() }

type tcpEnd struct{ *net.TCPConn }

func (e tcpEnd) reset() {
	e.SetLinger(0)
	e.Close()
}

// joint is one connection on the link: near faces the end that connected,
// far the end that accepted.
type joint struct {
	near, far end
	cut       bool // protected by the link's mu
}

// join carries a connection between near and far until both directions
// end.
func (l *Link) join(near, far end) {
	j := &joint{near: near, far: far}
	l.mu.Lock()
	l.joints[j] = struct{}{}
	l.made++
	filters := l.filters
	l.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.carry(j, Up, filters[Up], near, far) }()
	go func() { defer wg.Done(); l.carry(j, Down, filters[Down], far, near) }()
	go func() {
		wg.Wait()
		l.mu.Lock()
		delete(l.joints, j)
		l.mu.Unlock()
	}()
}

// carry runs direction d of j through filter f, then ends the receiver's
// side as the sender's ended: a clean end of stream (or a filter that
// stopped on its own) as a half-close; a reset as a reset; a receiver gone
// resets the sender too, as TCP answers a write to a closed socket.
func (l *Link) carry(j *joint, d Dir, f Filter, src, dst end) {
	if f == nil {
		f = func(from io.Reader, to io.Writer) { io.Copy(to, from) }
	}
	r := &source{r: src}
	w := &gate{l: l, j: j, d: d, w: dst}
	f(r, w)
	switch rerr := r.ended(); {
	case w.failed():
		src.reset()
		dst.reset()
	case rerr == nil || rerr == io.EOF:
		dst.CloseWrite()
	default:
		dst.reset()
	}
}

// source is a direction's reader; it keeps the error that ended it. (A
// filter may read on a goroutine of its own.)
type source struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
	}
	return n, err
}

func (s *source) ended() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// errCut is what a filter's write returns once the link was cut.
var errCut = errors.New("linktest: the link was cut")

// gate is a direction's writer: it holds writes while the direction is
// dark, and counts what it delivers. (A filter may write on a goroutine
// of its own.)
type gate struct {
	l   *Link
	j   *joint
	d   Dir
	w   io.Writer
	bad atomic.Bool // a write failed
}

func (g *gate) Write(p []byte) (int, error) {
	g.l.mu.Lock()
	for g.l.dark[g.d] && !g.j.cut {
		g.l.changed.Wait()
	}
	cut := g.j.cut
	g.l.mu.Unlock()
	if cut {
		g.bad.Store(true)
		return 0, errCut
	}
	n, err := g.w.Write(p)
	g.l.delivered[g.d].Add(uint64(n))
	if err != nil {
		g.bad.Store(true)
	}
	return n, err
}

func (g *gate) failed() bool { return g.bad.Load() }
