package checkpoint

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Link is one side of a primary↔backup connection carrying this package's
// framed messages: checkpoints or replay-log batches, acks, heartbeats and
// resync requests. Send may be called from several goroutines (wmu
// serialises writes); Next from one. heard is when anything last arrived
// (UnixNano), for failure detection.
type Link struct {
	conn  net.Conn
	wmu   sync.Mutex
	r     *Reader
	heard atomic.Int64
	now   func() time.Time
}

// NewLink returns a Link on conn accepting checkpoints of up to
// maxCheckpoint bytes. now tells the time (nil: time.Now).
func NewLink(conn net.Conn, maxCheckpoint int, now func() time.Time) *Link {
	if now == nil {
		now = time.Now
	}
	l := &Link{conn: conn, r: NewReader(conn, maxCheckpoint), now: now}
	l.heard.Store(now().UnixNano())
	return l
}

// Conn is the connection, for deadlines and closing.
func (l *Link) Conn() net.Conn { return l.conn }

// Send writes one message. A write that cannot finish within timeout
// fails: a peer that stops reading is as good as gone.
func (l *Link) Send(t MsgType, payload []byte, timeout time.Duration) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(l.now().Add(timeout))
	if err := WriteMessage(l.conn, t, payload); err != nil {
		return fmt.Errorf("sending %v: %w", t, err)
	}
	return nil
}

// Next reads one message and notes that the peer is alive. The payload is
// valid until the next call.
func (l *Link) Next() (MsgType, []byte, error) {
	t, p, err := l.r.Next()
	if err == nil {
		l.heard.Store(l.now().UnixNano())
	}
	return t, p, err
}

// SilentFor is how long the peer has been silent.
func (l *Link) SilentFor() time.Duration {
	return l.now().Sub(time.Unix(0, l.heard.Load()))
}

// Hello exchanges Hello messages, mine first, and checks the peer's: the
// other role, the same guest memory size, the same machine description.
func (l *Link) Hello(mine Hello, timeout time.Duration) (Hello, error) {
	if err := l.Send(MsgHello, mine.Append(nil), timeout); err != nil {
		return Hello{}, err
	}
	l.conn.SetReadDeadline(l.now().Add(timeout))
	defer l.conn.SetReadDeadline(time.Time{})
	t, p, err := l.Next()
	if err != nil {
		return Hello{}, fmt.Errorf("waiting for the peer's hello: %w", err)
	}
	if t != MsgHello {
		return Hello{}, fmt.Errorf("peer opened with %v, want hello", t)
	}
	h, err := DecodeHello(p)
	switch {
	case err != nil:
		return Hello{}, err
	case h.Role == mine.Role:
		return Hello{}, fmt.Errorf("peer is also a %v", h.Role)
	case h.MemPages != mine.MemPages:
		return Hello{}, fmt.Errorf("peer's guest has %d pages of memory, ours %d", h.MemPages, mine.MemPages)
	case h.Machine != mine.Machine:
		return Hello{}, fmt.Errorf("peer's machine is %q, ours %q: start both sides with the same mode, machine and devices", h.Machine, mine.Machine)
	}
	return h, nil
}

// Heartbeats sends a heartbeat every interval until stop closes; a failed
// send is reported to fail, and ends them.
func (l *Link) Heartbeats(interval time.Duration, stop <-chan struct{}, fail func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if err := l.Send(MsgHeartbeat, Heartbeat{Seq: seq}.Append(nil), 4*interval); err != nil {
			fail(err)
			return
		}
	}
}
