package replay

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// link is one side of the primary↔backup connection, framed as
// checkpoint/PROTOCOL.md. Writes from several goroutines are serialised by
// wmu; one goroutine reads. heard is when anything last arrived (UnixNano).
type link struct {
	conn  net.Conn
	wmu   sync.Mutex
	r     *format.Reader
	heard atomic.Int64
}

func newLink(conn net.Conn, maxCheckpoint int) *link {
	l := &link{conn: conn, r: format.NewReader(conn, maxCheckpoint)}
	l.heard.Store(time.Now().UnixNano())
	return l
}

// send writes one message; a write that cannot finish within timeout fails
// (a peer that stops reading is as good as gone).
func (l *link) send(t format.MsgType, payload []byte, timeout time.Duration) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.conn.SetWriteDeadline(time.Now().Add(timeout))
	if err := format.WriteMessage(l.conn, t, payload); err != nil {
		return fmt.Errorf("sending %v: %w", t, err)
	}
	return nil
}

// next reads one message and notes that the peer is alive.
func (l *link) next() (format.MsgType, []byte, error) {
	t, p, err := l.r.Next()
	if err == nil {
		l.heard.Store(time.Now().UnixNano())
	}
	return t, p, err
}

func (l *link) silentFor() time.Duration { return time.Since(time.Unix(0, l.heard.Load())) }

// hello exchanges Hello messages, mine first, and checks the peer's.
func (l *link) hello(mine format.Hello, timeout time.Duration) error {
	if err := l.send(format.MsgHello, mine.Append(nil), timeout); err != nil {
		return err
	}
	l.conn.SetReadDeadline(time.Now().Add(timeout))
	defer l.conn.SetReadDeadline(time.Time{})
	t, p, err := l.next()
	if err != nil {
		return fmt.Errorf("waiting for the peer's hello: %w", err)
	}
	if t != format.MsgHello {
		return fmt.Errorf("peer opened with %v, want hello", t)
	}
	h, err := format.DecodeHello(p)
	switch {
	case err != nil:
		return err
	case h.Role == mine.Role:
		return fmt.Errorf("peer is also a %v", h.Role)
	case h.MemPages != mine.MemPages:
		return fmt.Errorf("peer's guest has %d pages of memory, ours %d", h.MemPages, mine.MemPages)
	}
	return nil
}

// heartbeats sends a heartbeat every interval until stop closes; a failed
// send is reported through fail.
func (l *link) heartbeats(interval time.Duration, stop <-chan struct{}, fail func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if err := l.send(format.MsgHeartbeat, format.Heartbeat{Seq: seq}.Append(nil), 4*interval); err != nil {
			fail(err)
			return
		}
	}
}
