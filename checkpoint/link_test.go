package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/linktest"
)

// TestLinkHelloRefusesAMismatchedPeer: two primaries, or guests of other
// sizes, never start a stream.
func TestLinkHelloRefusesAMismatchedPeer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peer  Hello
		wantA string
	}{
		{"same role", Hello{Role: RolePrimary, MemPages: 16}, "peer is also a primary"},
		{"other memory", Hello{Role: RoleBackup, MemPages: 32}, "32 pages of memory, ours 16"},
		{"other machine", Hello{Role: RoleBackup, MemPages: 16, Machine: "disk=64M"}, `peer's machine is "disk=64M", ours ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := linktest.New().Pipe() // buffered: each side sends its hello before reading
			defer a.Close()
			defer b.Close()
			go func() {
				lb := NewLink(b, 0, nil)
				lb.Hello(tc.peer, time.Second) //nolint:errcheck // the other side judges
			}()
			_, err := NewLink(a, 0, nil).Hello(Hello{Role: RolePrimary, MemPages: 16}, time.Second)
			if err == nil || !strings.Contains(err.Error(), tc.wantA) {
				t.Fatalf("hello: %v, want %q", err, tc.wantA)
			}
		})
	}
}

// TestLinkSendWaitsForAPeerThatSpeaks: a peer that sends heartbeats but
// reads nothing for many write timeouts (a backup behind on its replay)
// holds a Send back instead of failing it, and the heartbeats of the
// waiting side do not fail meanwhile; a peer that neither reads nor speaks
// fails the Send.
func TestLinkSendWaitsForAPeerThatSpeaks(t *testing.T) {
	const timeout = 40 * time.Millisecond
	a, b := net.Pipe() // unbuffered: a write waits for the peer's read
	defer a.Close()
	defer b.Close()
	la := NewLink(a, 0, nil)
	go func() {
		for {
			if _, _, err := la.Next(); err != nil {
				return
			}
		}
	}()
	stop := make(chan struct{})
	speaking := make(chan struct{})
	go func() {
		defer close(speaking)
		for seq := uint64(1); ; seq++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			b.SetWriteDeadline(time.Now().Add(time.Second))
			if WriteMessage(b, MsgHeartbeat, Heartbeat{Seq: seq}.Append(nil)) != nil {
				return
			}
		}
	}()
	heartbeatFailed := make(chan error, 1)
	hbStop := make(chan struct{})
	go la.Heartbeats(5*time.Millisecond, timeout, hbStop, func(err error) { heartbeatFailed <- err })
	read := make(chan error, 1)
	go func() {
		time.Sleep(10 * timeout)
		r := NewReader(b, 0)
		_, _, err := r.Next()
		read <- err
		for err == nil { // drain what la's heartbeats write after it
			_, _, err = r.Next()
		}
	}()
	if err := la.Send(MsgAck, Ack{Epoch: 7}.Append(nil), timeout); err != nil {
		t.Fatalf("a send to a peer that speaks but reads after 10 timeouts: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	close(hbStop)
	select {
	case err := <-heartbeatFailed:
		t.Fatalf("a heartbeat failed while a message was being written: %v", err)
	default:
	}
	close(stop)
	<-speaking

	// Now the peer is silent and reads nothing.
	c, d := net.Pipe()
	defer c.Close()
	defer d.Close()
	lc := NewLink(c, 0, nil)
	done := make(chan error, 1)
	go func() { done <- lc.Send(MsgAck, Ack{Epoch: 8}.Append(nil), timeout) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a send to a peer that neither reads nor speaks succeeded")
		}
	case <-time.After(time.Minute):
		t.Fatal("a send to a peer that neither reads nor speaks is still blocked after a minute")
	}
}

// NextWithin fails with ErrSilent when nothing arrives in time, and reads
// a message that does.
func TestNextWithin(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	l := NewLink(a, DefaultMaxCheckpoint, nil)
	if _, _, err := l.NextWithin(30 * time.Millisecond); !errors.Is(err, ErrSilent) {
		t.Fatalf("nothing sent: %v, want ErrSilent", err)
	}
	go WriteMessage(b, MsgHeartbeat, Heartbeat{Seq: 7}.Append(nil))
	if typ, _, err := l.NextWithin(10 * time.Second); err != nil || typ != MsgHeartbeat {
		t.Fatalf("a heartbeat sent: %v, %v", typ, err)
	}
}

// NextWithin's timeout is silence, not the time a message takes: a long
// message whose bytes trickle in, never that far apart, is read whole; one
// whose bytes stop coming fails with ErrSilent.
func TestNextWithinLongMessage(t *testing.T) {
	const timeout = 300 * time.Millisecond
	var msg bytes.Buffer
	if err := WriteMessage(&msg, MsgCheckpoint, make([]byte, 4000)); err != nil {
		t.Fatal(err)
	}
	for _, stall := range []bool{false, true} {
		a, b := net.Pipe()
		l := NewLink(a, DefaultMaxCheckpoint, nil)
		go func() {
			// 20 pieces 30 ms apart: 600 ms in all, twice the timeout.
			data := msg.Bytes()
			for i, piece := 0, len(data)/20; i < 20; i++ {
				if stall && i == 10 {
					return // half the message, then nothing
				}
				end := min((i+1)*piece, len(data))
				if i == 19 {
					end = len(data)
				}
				if _, err := b.Write(data[i*piece : end]); err != nil {
					return
				}
				time.Sleep(timeout / 10)
			}
		}()
		typ, payload, err := l.NextWithin(timeout)
		switch {
		case stall && !errors.Is(err, ErrSilent):
			t.Errorf("the message stopped halfway: %v, want ErrSilent", err)
		case !stall && (err != nil || typ != MsgCheckpoint || len(payload) != 4000):
			t.Errorf("a message trickling in for twice the timeout: %v, %d bytes, %v; want it whole", typ, len(payload), err)
		}
		a.Close()
		b.Close()
	}
}

// TestHeartbeatsStopWhileStuck: a side that says it is stuck (SetStuck: a
// backup whose disk image hangs in a write) sends no heartbeat, so its
// peer finds it silent; once it is not, they go on. Without SetStuck they
// go on throughout.
func TestHeartbeatsStopWhileStuck(t *testing.T) {
	for _, withStuck := range []bool{true, false} {
		t.Run(fmt.Sprintf("SetStuck=%v", withStuck), func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			backup, primary := NewLink(a, 0, nil), NewLink(b, 0, nil)
			var stuck atomic.Bool
			if withStuck {
				backup.SetStuck(stuck.Load)
			}
			stop := make(chan struct{})
			defer close(stop)
			go backup.Heartbeats(5*time.Millisecond, time.Minute, stop, func(error) {})
			if _, _, err := primary.NextWithin(time.Second); err != nil {
				t.Fatalf("no heartbeat before: %v", err)
			}
			stuck.Store(true)
			for heard := 0; ; heard++ { // what was written before, then silence
				if heard > 100 {
					t.Fatal("heartbeats go on while stuck")
				}
				_, _, err := primary.NextWithin(300 * time.Millisecond)
				if errors.Is(err, ErrSilent) {
					if !withStuck {
						t.Fatal("heartbeats stopped without SetStuck")
					}
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if !withStuck {
					break // heard while "stuck", as it should be
				}
			}
			stuck.Store(false)
			if _, _, err := primary.NextWithin(time.Second); err != nil {
				t.Fatalf("no heartbeat once not stuck: %v", err)
			}
		})
	}
}
