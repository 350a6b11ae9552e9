package linktest

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// The contract every connection over a link keeps, in memory (Pipe) and
// over loopback TCP (Proxy): each test runs on both.

type connect func(t *testing.T, l *Link) (dialer, acceptor net.Conn)

var transports = []struct {
	name    string
	connect connect
}{
	{"pipe", func(t *testing.T, l *Link) (net.Conn, net.Conn) {
		a, b := l.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}},
	{"proxy", func(t *testing.T, l *Link) (net.Conn, net.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, _ := ln.Accept()
			accepted <- c
		}()
		a, err := net.Dial("tcp", l.Proxy(t, ln.Addr().String()))
		if err != nil {
			t.Fatal(err)
		}
		b := vmmtest.Receive(t, "the proxied connection", accepted)
		if b == nil {
			t.Fatal("accept failed")
		}
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}},
}

func eachTransport(t *testing.T, test func(t *testing.T, connect connect)) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) { test(t, tr.connect) })
	}
}

func mustWrite(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if n, err := c.Write([]byte(s)); err != nil || n != len(s) {
		t.Fatalf("write %q: %d, %v", s, n, err)
	}
}

func mustRead(t *testing.T, c net.Conn, want string) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
		t.Fatalf("read %q, %v; want %q", got, err, want)
	}
}

// readErr reads until an error and returns it with what was read.
func readErr(c net.Conn) (string, error) {
	var b bytes.Buffer
	_, err := io.Copy(&b, c)
	if err == nil {
		err = io.EOF // io.Copy's clean end
	}
	return b.String(), err
}

// Bytes go both ways, counted; a half-close ends one direction only.
func TestLinkCarriesAndHalfCloses(t *testing.T) {
	eachTransport(t, func(t *testing.T, connect connect) {
		l := New()
		a, b := connect(t, l)
		mustWrite(t, a, "hello")
		mustRead(t, b, "hello")
		mustWrite(t, b, "ack")
		mustRead(t, a, "ack")
		// (The count follows the write the reader may already have read.)
		vmmtest.WaitUntil(t, "5 bytes up and 3 down counted", func() bool { return l.Delivered(Up) == 5 && l.Delivered(Down) == 3 })
		if l.Connections() != 1 {
			t.Fatalf("%d connections", l.Connections())
		}
		mustWrite(t, a, "last")
		if err := a.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got, err := readErr(b); got != "last" || err != io.EOF {
			t.Fatalf("after CloseWrite the acceptor read %q, then %v", got, err)
		}
		mustWrite(t, b, "still")
		mustRead(t, a, "still")
	})
}

// A close with nothing left unread ends the stream: the peer reads it all,
// then EOF, and its writes fail (at once in memory; TCP takes a write or
// two to hear of it).
func TestLinkCloseEndsTheStream(t *testing.T) {
	eachTransport(t, func(t *testing.T, connect connect) {
		l := New()
		a, b := connect(t, l)
		mustWrite(t, a, "bye")
		a.Close()
		if got, err := readErr(b); got != "bye" || err != io.EOF {
			t.Fatalf("read %q, then %v", got, err)
		}
		vmmtest.WaitUntil(t, "a write to the closed peer to fail", func() bool {
			_, err := b.Write([]byte("x"))
			return err != nil
		})
		if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("a read on the closed end: %v", err)
		}
	})
}

// A close with bytes received and unread resets the connection, as Linux
// does: the peer reads what reached it, then ECONNRESET.
func TestLinkCloseWithUnreadBytesResets(t *testing.T) {
	eachTransport(t, func(t *testing.T, connect connect) {
		l := New()
		a, b := connect(t, l)
		mustWrite(t, b, "unread")
		vmmtest.WaitUntil(t, "the bytes to reach the dialer", func() bool { return l.Delivered(Down) == 6 })
		mustWrite(t, a, "sent")
		// The dialer's end may still be passing "sent" on (TCP): once b
		// has it, a reset cannot lose it.
		mustRead(t, b, "sent")
		a.Close()
		if _, err := readErr(b); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("after a close with unread bytes the peer read %v, want ECONNRESET", err)
		}
	})
}

// A cut resets every connection on the link: both ends fail, a read
// blocked on either returns; a connection made after it works.
func TestLinkCut(t *testing.T) {
	eachTransport(t, func(t *testing.T, connect connect) {
		l := New()
		a, b := connect(t, l)
		mustWrite(t, a, "x")
		mustRead(t, b, "x")
		blocked := make(chan error, 1)
		go func() { _, err := readErr(a); blocked <- err }()
		l.Cut()
		if err := vmmtest.Receive(t, "the dialer's read to fail", blocked); err == io.EOF {
			t.Fatal("the dialer read a clean end of stream from a cut link")
		}
		if _, err := readErr(b); err == io.EOF {
			t.Fatal("the acceptor read a clean end of stream from a cut link")
		}
		vmmtest.WaitUntil(t, "a write on the cut link to fail", func() bool {
			_, err := a.Write([]byte("x"))
			return err != nil
		})
		a2, b2 := connect(t, l)
		mustWrite(t, a2, "again")
		mustRead(t, b2, "again")
	})
}

// A dark direction takes writes and delivers nothing, so a reader can only
// time out; healed, it delivers what it held, in order. The other
// direction is not affected.
func TestLinkDarkThenHeal(t *testing.T) {
	eachTransport(t, func(t *testing.T, connect connect) {
		l := New()
		a, b := connect(t, l)
		l.Dark(Up)
		mustWrite(t, a, "held")
		mustWrite(t, a, " in order")
		mustWrite(t, b, "down works")
		mustRead(t, a, "down works")
		b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		var ne net.Error
		if n, err := b.Read(make([]byte, 16)); n != 0 || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("a read on the dark direction: %d, %v; want a timeout", n, err)
		}
		if l.Delivered(Up) != 0 {
			t.Fatalf("%d bytes delivered in the dark", l.Delivered(Up))
		}
		b.SetReadDeadline(time.Time{})
		l.Heal()
		mustRead(t, b, "held in order")
	})
}

// While a direction is dark its buffers fill and a writer blocks, as a
// kernel's do; a write deadline then fails the write.
func TestLinkDarkFillsTheBuffers(t *testing.T) {
	l := New()
	l.Buffer = 4 << 10
	a, _ := l.Pipe()
	l.Dark(Up)
	a.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, e := a.Write(make([]byte, 1<<20))
	var ne net.Error
	if !errors.As(e, &ne) || !ne.Timeout() || n == 0 || n >= 1<<20 {
		t.Fatalf("a 1 MiB write on a dark link with 4 KiB buffers: %d, %v; want part of it, then a timeout", n, e)
	}
}

// A filter sees every byte of its direction, and a Delay filter delivers
// them all, in order.
func TestLinkFilter(t *testing.T) {
	eachTransport(t, func(t *testing.T, connect connect) {
		l := New()
		l.SetFilter(Up, func(from io.Reader, to io.Writer) {
			buf := make([]byte, 1)
			for {
				if _, err := from.Read(buf); err != nil {
					return
				}
				if _, err := to.Write(bytes.ToUpper(buf)); err != nil {
					return
				}
			}
		})
		l.SetFilter(Down, Delay(time.Millisecond))
		a, b := connect(t, l)
		mustWrite(t, a, "shout")
		mustRead(t, b, "SHOUT")
		for i := range 100 {
			mustWrite(t, b, string(rune('a'+i%26)))
		}
		want := ""
		for i := range 100 {
			want += string(rune('a' + i%26))
		}
		mustRead(t, a, want)
	})
}
