package linktest

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Conn is one end of an in-memory connection, with what the engines use of
// TCP: a stream both ways, deadlines, a half-close (CloseWrite), and what a
// reset does. Each direction holds a bounded number of bytes (the kernel's
// buffers): a writer blocks once they are full, until the reader reads,
// its write deadline passes, or the connection ends.
//
// As on Linux, closing an end that has received bytes it did not read
// resets the connection instead of ending its stream: the peer reads what
// had reached it, then ECONNRESET, and its writes fail with ECONNRESET at
// once. Otherwise the peer reads to io.EOF, and its writes fail with
// EPIPE. An end's own calls after Close fail with net.ErrClosed.
type Conn struct {
	in, out     *stream
	local, peer addr
}

// newPair returns the two ends of an in-memory connection, each direction
// holding up to max bytes.
func newPair(max int, a, b string) (*Conn, *Conn) {
	ab, ba := newStream(max), newStream(max)
	return &Conn{in: ba, out: ab, local: addr(a), peer: addr(b)},
		&Conn{in: ab, out: ba, local: addr(b), peer: addr(a)}
}

// stream is one direction of a connection: the bytes the reader has
// received and not read yet.
type stream struct {
	mu   sync.Mutex
	cond *sync.Cond
	// mu protects what follows.
	buf []byte
	max int
	// eof: the writer shut its side down; reads end with io.EOF once buf is
	// drained.
	eof bool
	// reset: the connection was reset; writes fail at once, reads once buf
	// is drained.
	reset bool
	// readerClosed: the reading end closed (its reads fail, writes to it
	// fail with EPIPE); writerClosed: the writing end closed.
	readerClosed, writerClosed bool
	// The reader's and the writer's deadlines (zero: none).
	readDeadline, writeDeadline time.Time
}

func newStream(max int) *stream {
	s := &stream{max: max}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// wait waits for a change, or until deadline. Called with mu held.
func (s *stream) wait(deadline time.Time) error {
	if deadline.IsZero() {
		s.cond.Wait()
		return nil
	}
	d := time.Until(deadline)
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	s.cond.Wait()
	t.Stop()
	return nil
}

func (s *stream) update(f func(s *stream)) {
	s.mu.Lock()
	f(s)
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: network, Source: c.local, Addr: c.peer, Err: err}
}

// errReset is what a reset connection's calls return.
var errReset = os.NewSyscallError("connection", syscall.ECONNRESET)

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	s := c.in
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch {
		case s.readerClosed:
			return 0, c.opError("read", net.ErrClosed)
		case len(s.buf) > 0:
			n := copy(p, s.buf)
			s.buf = s.buf[n:]
			if len(s.buf) == 0 {
				s.buf = nil
			}
			s.cond.Broadcast() // room for the writer
			return n, nil
		case s.reset:
			return 0, c.opError("read", errReset)
		case s.eof:
			return 0, io.EOF
		case len(p) == 0:
			return 0, nil
		}
		if err := s.wait(s.readDeadline); err != nil {
			return 0, c.opError("read", err)
		}
	}
}

// Write implements net.Conn.
func (c *Conn) Write(p []byte) (int, error) {
	s := c.out
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for {
		switch {
		case s.writerClosed:
			return n, c.opError("write", net.ErrClosed)
		case s.reset:
			return n, c.opError("write", errReset)
		case s.eof, s.readerClosed: // after CloseWrite, or to a closed peer
			return n, c.opError("write", os.NewSyscallError("write", syscall.EPIPE))
		case n == len(p):
			return n, nil
		}
		if room := s.max - len(s.buf); room > 0 {
			k := min(room, len(p)-n)
			s.buf = append(s.buf, p[n:n+k]...)
			n += k
			s.cond.Broadcast()
			continue
		}
		if err := s.wait(s.writeDeadline); err != nil {
			return n, c.opError("write", err)
		}
	}
}

// Close implements net.Conn: it ends this side's stream, or resets the
// connection if bytes received were left unread (see Conn).
func (c *Conn) Close() error {
	closed, unread := false, false
	c.in.update(func(s *stream) {
		closed, unread = s.readerClosed, len(s.buf) > 0
		s.readerClosed, s.buf = true, nil
		s.reset = s.reset || unread
	})
	if closed {
		return c.opError("close", net.ErrClosed)
	}
	c.out.update(func(s *stream) {
		s.writerClosed = true
		s.eof = true
		s.reset = s.reset || unread
	})
	return nil
}

// CloseWrite shuts down the writing side, as TCP's half-close: the peer
// reads what was written, then io.EOF; this end can still read.
func (c *Conn) CloseWrite() error {
	c.out.update(func(s *stream) { s.eof = true })
	return nil
}

// Reset closes c and resets the connection, as a TCP close with SO_LINGER
// 0: the peer reads what had reached it, then ECONNRESET.
func (c *Conn) Reset() {
	c.in.update(func(s *stream) { s.readerClosed, s.buf, s.reset = true, nil, true })
	c.out.update(func(s *stream) { s.writerClosed, s.reset = true, true })
}

// LocalAddr implements net.Conn.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr implements net.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.peer }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.in.update(func(s *stream) { s.readDeadline = t })
	return nil
}

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.out.update(func(s *stream) { s.writeDeadline = t })
	return nil
}

// network is the in-memory connections' net.Addr network.
const network = "linktest"

// addr names an end of an in-memory connection.
type addr string

func (a addr) Network() string { return network }
func (a addr) String() string  { return string(a) }
