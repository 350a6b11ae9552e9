package bench

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// kvClient is the kv guest's load: a closed loop of KVWindow INCR
// requests outstanding over UDP, each reply's round trip taken from its
// request's send (replies come in request order). A reply that does not
// come within a second is taken for lost and sent again. Safe for
// concurrent use.
type kvClient struct {
	conn *net.UDPConn

	mu      sync.Mutex
	sent    []time.Time // send times of the requests outstanding, oldest first
	replies uint64
	rtts    []sample
	last    time.Time // the last reply, or the load's start
	err     error
	running bool
	done    chan struct{}
}

type sample struct {
	at time.Time
	d  time.Duration
}

func dialKV(addr string) (*kvClient, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUDP("udp4", nil, ua)
	if err != nil {
		return nil, err
	}
	return &kvClient{conn: conn, done: make(chan struct{})}, nil
}

// probe asks until the guest answers (it may not be listening yet) or
// within passes.
func (c *kvClient) probe(within time.Duration) error {
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(within); time.Now().Before(deadline); {
		c.conn.Write([]byte("GET probe"))
		c.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, err := c.conn.Read(buf); err == nil && strings.Contains(string(buf[:n]), "NOTFOUND") {
			c.conn.SetReadDeadline(time.Time{})
			return nil
		}
	}
	return fmt.Errorf("the kv guest did not answer in %v", within)
}

// start begins the load.
func (c *kvClient) start() {
	c.mu.Lock()
	c.running, c.last = true, time.Now()
	for range KVWindow {
		c.sendLocked()
	}
	c.mu.Unlock()
	go c.read()
	go c.watch()
}

func (c *kvClient) sendLocked() {
	c.sent = append(c.sent, time.Now())
	if _, err := c.conn.Write([]byte("INCR k")); err != nil && c.err == nil {
		c.err = err
	}
}

func (c *kvClient) read() {
	buf := make([]byte, 2048)
	for {
		n, err := c.conn.Read(buf)
		if err != nil {
			return
		}
		now := time.Now()
		c.mu.Lock()
		if !strings.Contains(string(buf[:n]), " VALUE ") {
			c.mu.Unlock()
			continue // a late probe's answer
		}
		c.replies++
		c.last = now
		if len(c.sent) > 0 {
			c.rtts = append(c.rtts, sample{at: now, d: now.Sub(c.sent[0])})
			c.sent = c.sent[1:]
		}
		if c.running {
			c.sendLocked()
		}
		c.mu.Unlock()
	}
}

// watch sends the window again when no reply came for a second (requests
// or replies lost).
func (c *kvClient) watch() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		c.mu.Lock()
		if c.running && time.Since(c.last) > time.Second {
			c.sent, c.last = c.sent[:0], time.Now()
			for range KVWindow {
				c.sendLocked()
			}
		}
		c.mu.Unlock()
	}
}

// stop ends the load and closes the socket.
func (c *kvClient) stop() error {
	c.mu.Lock()
	wasRunning := c.running
	c.running = false
	err := c.err
	c.mu.Unlock()
	if wasRunning {
		close(c.done)
	}
	c.conn.Close()
	return err
}

func (c *kvClient) repliesSoFar() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replies
}

// roundTrips returns the round trips of the replies in [from, to).
func (c *kvClient) roundTrips(from, to time.Time) []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Duration
	for _, s := range c.rtts {
		if !s.at.Before(from) && s.at.Before(to) {
			out = append(out, s.d)
		}
	}
	return out
}
