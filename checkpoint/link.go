package checkpoint

import (
	"errors"
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
	// silence is NextWithin's timeout while it reads, else 0: each read of
	// the connection then waits that long for bytes. Only the reading
	// goroutine touches it.
	silence time.Duration
	// stuck (SetStuck) says when Heartbeats fall silent; nil: never.
	stuck func() bool
}

// SetStuck has Heartbeats send nothing while stuck reports true (a backup
// whose disk image hangs in a write while it applies a checkpoint): the
// peer, hearing nothing, finds this side silent a failure timeout later,
// as it would a dead one, instead of waiting forever for an answer that
// does not come. Without it heartbeats go on whatever the receive loop
// does, for a side whose handler may wait on purpose (flow control). Call
// before Heartbeats; stuck is called from Heartbeats' goroutine.
func (l *Link) SetStuck(stuck func() bool) { l.stuck = stuck }

// NewLink returns a Link on conn accepting checkpoints of up to
// maxCheckpoint bytes. now tells the time (nil: time.Now).
func NewLink(conn net.Conn, maxCheckpoint int, now func() time.Time) *Link {
	if now == nil {
		now = time.Now
	}
	l := &Link{conn: conn, now: now}
	l.r = NewReader(hearing{l}, maxCheckpoint)
	l.heard.Store(now().UnixNano())
	return l
}

// hearing reads l's connection and notes that the peer is alive whenever
// bytes arrive: a long message (a full checkpoint over a slow link) is
// not silence.
type hearing struct{ l *Link }

// Read implements io.Reader. Under NextWithin it waits for bytes for the
// link's silence timeout from each read, not from the message's start.
func (h hearing) Read(p []byte) (int, error) {
	if h.l.silence > 0 {
		h.l.conn.SetReadDeadline(h.l.now().Add(h.l.silence))
	}
	n, err := h.l.conn.Read(p)
	if n > 0 {
		h.l.heard.Store(h.l.now().UnixNano())
	}
	return n, err
}

// Conn is the connection, for deadlines and closing.
func (l *Link) Conn() net.Conn { return l.conn }

// Send writes one message. A write blocked for timeout while the peer said
// nothing for as long fails: a peer that neither reads nor speaks is gone.
// One that speaks (its heartbeats, its acks) but reads slowly, as a backup
// behind on its replay does, holds the writer back instead: the deadline
// moves on while the peer is heard. (It must move before it passes: a
// write that timed out leaves a TLS stream unusable.)
func (l *Link) Send(t MsgType, payload []byte, timeout time.Duration) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.send(t, payload, timeout)
}

// send is Send with wmu held.
func (l *Link) send(t MsgType, payload []byte, timeout time.Duration) error {
	l.conn.SetWriteDeadline(l.now().Add(timeout))
	if timeout <= 0 {
		return wrapSend(t, WriteMessage(l.conn, t, payload))
	}
	var (
		mu     sync.Mutex // orders extend against the end of the write
		done   bool
		extend *time.Timer
	)
	extend = time.AfterFunc(timeout/2, func() {
		mu.Lock()
		defer mu.Unlock()
		if done || l.SilentFor() >= timeout {
			return
		}
		l.conn.SetWriteDeadline(l.now().Add(timeout))
		extend.Reset(timeout / 2)
	})
	err := WriteMessage(l.conn, t, payload)
	mu.Lock()
	done = true
	extend.Stop()
	mu.Unlock()
	return wrapSend(t, err)
}

func wrapSend(t MsgType, err error) error {
	if err != nil {
		return fmt.Errorf("sending %v: %w", t, err)
	}
	return nil
}

// Next reads one message. The payload is valid until the next call.
func (l *Link) Next() (MsgType, []byte, error) {
	return l.r.Next()
}

// ErrSilent is NextWithin's error when nothing arrived in time.
var ErrSilent = errors.New("peer silent")

// NextWithin reads one message, failing with an error wrapping ErrSilent
// if the peer sends nothing for timeout (the follower's failure detector:
// a primary sends heartbeats at least that often). A message that takes
// longer to arrive, its bytes never that far apart (a pre-copy round over
// a slow link), is not silence. The payload is valid until the next call.
func (l *Link) NextWithin(timeout time.Duration) (MsgType, []byte, error) {
	l.silence = timeout
	defer func() { l.silence = 0 }()
	t, payload, err := l.r.Next()
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		return 0, nil, fmt.Errorf("%w for %v", ErrSilent, timeout)
	}
	return t, payload, err
}

// SilentFor is how long nothing arrived from the peer.
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

// Heartbeats sends a heartbeat every interval until stop closes, but for
// while another message is being written (the peer hears that one) and
// while this side is stuck (SetStuck). A
// heartbeat not written within timeout (the failure timeout: see Send) is
// reported to fail, and ends them.
func (l *Link) Heartbeats(interval, timeout time.Duration, stop <-chan struct{}, fail func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if (l.stuck != nil && l.stuck()) || !l.wmu.TryLock() {
			continue
		}
		err := l.send(MsgHeartbeat, Heartbeat{Seq: seq}.Append(nil), timeout)
		l.wmu.Unlock()
		if err != nil {
			fail(err)
			return
		}
	}
}
