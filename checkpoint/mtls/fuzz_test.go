package mtls_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/mtls"
)

// pipeListener is a net.Listener of in-memory connections (net.Pipe): the
// fuzzer's stranger is the other end of each.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

// dial returns the client end of a new connection the listener accepts.
func (l *pipeListener) dial() net.Conn {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
	case <-l.done:
		s.Close()
	}
	return c
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7100} }

// fuzzWorld is the replication link's listener (ALPN ftckpt/6, admission)
// and a member's identity, built once.
type fuzzWorld struct {
	server, member *mtls.Identity
	session        []byte // what a member sent in a whole session: handshake, Hello
}

var (
	worldOnce sync.Once
	world     fuzzWorld
)

func getWorld(tb testing.TB) *fuzzWorld {
	worldOnce.Do(func() {
		ca, err := mtls.NewCA("fuzz CA", time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		if world.server, err = ca.Identity("backup"); err != nil {
			tb.Fatal(err)
		}
		if world.member, err = ca.Identity("primary"); err != nil {
			tb.Fatal(err)
		}
		// Record a member's session: its handshake and its Hello.
		ln, pl := listen(mtls.ListenOptions{Identity: world.server, Proto: format.ALPN, Confirm: true, Log: quiet})
		defer ln.Close()
		raw := pl.dial()
		rec := &recorder{Conn: raw}
		go func() {
			if c, err := ln.Accept(); err == nil {
				io.Copy(io.Discard, c)
			}
		}()
		c, err := mtls.Handshake(context.Background(), rec, "127.0.0.1:7100", mtls.DialOptions{Identity: world.member, Proto: format.ALPN, Confirm: true})
		if err != nil {
			tb.Fatal(err)
		}
		format.WriteMessage(c, format.MsgHello, format.Hello{Role: format.RolePrimary, MemPages: 8, Machine: "m"}.Append(nil))
		c.Close()
		world.session = rec.out.Bytes()
	})
	return &world
}

var quiet = slog.New(slog.DiscardHandler)

// listen is a Listener on an in-memory pipeListener, and the latter, to
// dial through.
func listen(o mtls.ListenOptions) (*mtls.Listener, *pipeListener) {
	pl := newPipeListener()
	return mtls.Listen(pl, o), pl
}

type recorder struct {
	net.Conn
	out bytes.Buffer
}

func (r *recorder) Write(p []byte) (int, error) {
	r.out.Write(p)
	return r.Conn.Write(p)
}

// FuzzHandshake is the replication link's handshake path and the first
// message after it. With afterHandshake false, data is a stranger's whole
// byte stream to the listener: it must be refused (no such stream holds a
// valid handshake with a member's key), never accepted, never crash the
// listener. With afterHandshake true, a member passes the handshake and
// data is what it sends first: the Hello exchange must end in a valid
// Hello or an error, never a crash or a hang.
func FuzzHandshake(f *testing.F) {
	w := getWorld(f)
	hello := format.Hello{Role: format.RolePrimary, MemPages: 8, Machine: "m"}.Append(nil)
	frame := func(version uint16, t format.MsgType, p []byte) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(p)))
		b = binary.LittleEndian.AppendUint16(b, version)
		b = binary.LittleEndian.AppendUint16(b, uint16(t))
		return append(b, p...)
	}
	f.Add(false, w.session)
	f.Add(false, w.session[:len(w.session)/2])
	f.Add(false, w.session[:9])
	f.Add(false, frame(2, format.MsgHello, hello))
	f.Add(false, []byte("POST /v1/acquire HTTP/1.1\r\n\r\n"))
	f.Add(true, frame(format.ProtocolVersion, format.MsgHello, hello))
	f.Add(true, frame(2, format.MsgHello, hello))
	f.Add(true, frame(format.ProtocolVersion, format.MsgCheckpoint, make([]byte, 64)))
	f.Add(true, frame(format.ProtocolVersion, format.MsgRefused, []byte("go away")))
	f.Add(true, []byte{})
	f.Fuzz(func(t *testing.T, afterHandshake bool, data []byte) {
		refused := make(chan error, 1)
		ln, pl := listen(mtls.ListenOptions{Identity: w.server, Proto: format.ALPN, Confirm: true, Log: quiet,
			Timeout: 10 * time.Second, Refused: func(_ net.Addr, err error) { refused <- err }})
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- c
			}
		}()
		raw := pl.dial()
		defer raw.Close()
		if !afterHandshake {
			go io.Copy(io.Discard, raw) // the server's flight, unread otherwise
			raw.Write(data)
			raw.Close()
			select {
			case err := <-refused:
				if !errors.Is(err, mtls.ErrRefused) {
					t.Fatalf("refused with %v, not ErrRefused", err)
				}
			case c := <-accepted:
				c.Close()
				t.Fatalf("a stranger's %d bytes were accepted", len(data))
			}
			return
		}
		dialed := make(chan error, 1)
		go func() {
			c, err := mtls.Handshake(context.Background(), raw, "127.0.0.1:7100", mtls.DialOptions{Identity: w.member, Proto: format.ALPN, Confirm: true})
			if err == nil {
				go io.Copy(io.Discard, c) // the backup's Hello
				c.Write(data)
				c.Close()
			}
			dialed <- err
		}()
		var c net.Conn
		select {
		case c = <-accepted:
		case err := <-refused:
			t.Fatalf("a member was refused: %v", err)
		}
		l := format.NewLink(c, 1<<20, nil)
		h, err := l.Hello(format.Hello{Role: format.RoleBackup, MemPages: 8, Machine: "m"}, 10*time.Second)
		c.Close()
		if err == nil && (h.Role != format.RolePrimary || h.MemPages != 8 || h.Machine != "m") {
			t.Fatalf("Hello accepted %+v", h)
		}
		if err := <-dialed; err != nil {
			t.Fatalf("a member could not connect: %v", err)
		}
	})
}
