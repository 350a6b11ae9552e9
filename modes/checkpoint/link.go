package checkpoint

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// link is one side of the primary↔backup connection. Writes from several
// goroutines are serialised by wmu; reads come from one goroutine. heard is
// the time (UnixNano) anything last arrived from the peer.
type link struct {
	conn  net.Conn
	wmu   sync.Mutex
	r     *format.Reader
	heard atomic.Int64
	now   func() time.Time
}

func newLink(conn net.Conn, maxCheckpoint int, now func() time.Time) *link {
	l := &link{conn: conn, r: format.NewReader(conn, maxCheckpoint), now: now}
	l.heard.Store(now().UnixNano())
	return l
}

// send writes one message. A write that cannot finish within timeout fails:
// a peer that stops reading is as good as gone.
func (l *link) send(t format.MsgType, payload []byte, timeout time.Duration) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(l.now().Add(timeout))
	if err := format.WriteMessage(l.conn, t, payload); err != nil {
		return fmt.Errorf("sending %v: %w", t, err)
	}
	return nil
}

// next reads one message and notes that the peer is alive.
func (l *link) next() (format.MsgType, []byte, error) {
	t, p, err := l.r.Next()
	if err == nil {
		l.heard.Store(l.now().UnixNano())
	}
	return t, p, err
}

// silentFor is how long the peer has been silent.
func (l *link) silentFor() time.Duration {
	return l.now().Sub(time.Unix(0, l.heard.Load()))
}

// hello exchanges Hello messages; mine goes first.
func (l *link) hello(mine format.Hello, timeout time.Duration) (format.Hello, error) {
	if err := l.send(format.MsgHello, mine.Append(nil), timeout); err != nil {
		return format.Hello{}, err
	}
	l.conn.SetReadDeadline(l.now().Add(timeout))
	defer l.conn.SetReadDeadline(time.Time{})
	t, p, err := l.next()
	if err != nil {
		return format.Hello{}, fmt.Errorf("waiting for the peer's hello: %w", err)
	}
	if t != format.MsgHello {
		return format.Hello{}, fmt.Errorf("peer opened with %v, want hello", t)
	}
	h, err := format.DecodeHello(p)
	if err != nil {
		return format.Hello{}, err
	}
	if h.Role == mine.Role {
		return format.Hello{}, fmt.Errorf("peer is also a %v", h.Role)
	}
	if h.MemPages != mine.MemPages {
		return format.Hello{}, fmt.Errorf("peer's guest has %d pages of memory, ours %d", h.MemPages, mine.MemPages)
	}
	return h, nil
}

// heartbeats sends a heartbeat every interval until stop closes or a send
// fails (reported on errc).
func (l *link) heartbeats(interval time.Duration, stop <-chan struct{}, errc chan<- error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if err := l.send(format.MsgHeartbeat, format.Heartbeat{Seq: seq}.Append(nil), 4*interval); err != nil {
			errc <- err
			return
		}
	}
}
