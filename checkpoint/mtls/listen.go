package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Admitted is the byte the accepting side sends, with ListenOptions.Confirm,
// once the dialler's certificate has passed: the dialler reads it before it
// goes on (Dial with DialOptions.Confirm).
const Admitted byte = 0x06

// DefaultTimeout bounds a handshake, admission included.
const DefaultTimeout = 10 * time.Second

// maxHandshakes bounds the handshakes a listener runs at once: strangers
// that connect and say nothing cost at most this many goroutines, each for
// at most the timeout.
const maxHandshakes = 64

// ListenOptions configure a Listener.
type ListenOptions struct {
	// Identity is the host's; nil accepts plain TCP (--insecure).
	Identity *Identity
	// Proto is the protocol and version spoken (ALPN), e.g. "ftckpt/6".
	Proto string
	// Confirm sends Admitted once the dialler passed (see Admitted).
	Confirm bool
	// Timeout bounds a handshake; 0 is DefaultTimeout.
	Timeout time.Duration
	// What names the listener in logs ("the backup's --listen").
	What string
	// Log receives each refusal at WARN; nil is slog.Default().
	Log *slog.Logger
	// Refused, if set, is told of each refusal, after it is logged.
	Refused func(from net.Addr, err error)
	// NotTLS, if set, describes a peer that sent first (up to 16 bytes)
	// instead of a TLS handshake, or returns "" if it does not know it;
	// it may answer the peer on c (an ftckpt that speaks in the clear
	// reads an error it understands).
	NotTLS func(first []byte, c net.Conn) string
	// SniffPlain, without an Identity, waits for the dialler's first bytes
	// and refuses one that speaks TLS (it runs with certificates, this
	// host with --insecure). Only for protocols whose dialler speaks first.
	SniffPlain bool
}

// Listener accepts connections of peers that passed the handshake: see
// the package comment.
type Listener struct {
	inner net.Listener
	o     ListenOptions
	cfg   *tls.Config

	ctx    context.Context // ends at Close: handshakes in progress stop
	cancel context.CancelFunc
	conns  chan net.Conn
	sem    chan struct{}
	wg     sync.WaitGroup

	mu  sync.Mutex // protects err
	err error      // why the inner listener stopped accepting
}

// Listen accepts on inner (which the Listener owns) the peers o admits.
func Listen(inner net.Listener, o ListenOptions) *Listener {
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.What == "" {
		o.What = "listener " + inner.Addr().String()
	}
	l := &Listener{inner: inner, o: o, conns: make(chan net.Conn), sem: make(chan struct{}, maxHandshakes)}
	if o.Identity != nil {
		l.cfg = o.Identity.ServerConfig(o.Proto)
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.loop()
	return l
}

// Accept returns the next connection that passed the handshake: a
// *tls.Conn, its handshake done (and Admitted sent), or with no Identity
// the TCP connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting and ends the handshakes in progress. Connections
// already returned by Accept stay open.
func (l *Listener) Close() error {
	l.cancel()
	err := l.inner.Close()
	l.wg.Wait()
	return err
}

// Addr is the address listened on.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

func (l *Listener) loop() {
	defer l.wg.Done()
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if ne, ok := err.(interface{ Temporary() bool }); ok && ne.Temporary() && l.ctx.Err() == nil {
				time.Sleep(10 * time.Millisecond) // out of descriptors: let some close
				continue
			}
			l.mu.Lock()
			if l.ctx.Err() == nil {
				l.err = err
			}
			l.mu.Unlock()
			l.cancel()
			return
		}
		select {
		case l.sem <- struct{}{}:
		case <-l.ctx.Done():
			c.Close()
			return
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.sem }()
			ac, err := l.admit(c)
			if err != nil {
				c.Close()
				if l.ctx.Err() == nil {
					l.o.Log.Warn("refused a connection", "on", l.o.What, "from", c.RemoteAddr().String(), "err", err)
					if l.o.Refused != nil {
						l.o.Refused(c.RemoteAddr(), err)
					}
				}
				return
			}
			select {
			case l.conns <- ac:
			case <-l.ctx.Done():
				ac.Close()
			}
		}()
	}
}

// admit runs c's handshake: TLS, or with no Identity the plain checks.
func (l *Listener) admit(c net.Conn) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.o.Timeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if l.cfg == nil {
		return l.admitPlain(c)
	}
	rec := &recorder{Conn: c}
	tc := tls.Server(rec, l.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		if ctx.Err() != nil && l.ctx.Err() == nil {
			return nil, fmt.Errorf("%w: no TLS handshake within %v", ErrRefused, l.o.Timeout)
		}
		return nil, refusal(err, rec.first, l.notTLS(c), "")
	}
	if l.o.Confirm {
		if _, err := tc.Write([]byte{Admitted}); err != nil {
			return nil, fmt.Errorf("confirming the handshake: %w", err)
		}
	}
	if !stop() {
		return nil, fmt.Errorf("%w: no TLS handshake within %v", ErrRefused, l.o.Timeout)
	}
	c.SetDeadline(time.Time{})
	return tc, nil
}

// notTLS is o.NotTLS bound to c, or nil.
func (l *Listener) notTLS(c net.Conn) func([]byte) string {
	if l.o.NotTLS == nil {
		return nil
	}
	return func(first []byte) string { return l.o.NotTLS(first, c) }
}

// admitPlain accepts a plain TCP peer; with SniffPlain, one that does not
// open with TLS.
func (l *Listener) admitPlain(c net.Conn) (net.Conn, error) {
	if !l.o.SniffPlain {
		return c, nil
	}
	first := make([]byte, 3)
	if _, err := io.ReadFull(c, first); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("the peer closed the connection before it said anything: %w", err)
		}
		return nil, fmt.Errorf("waiting for the peer's first bytes: %w", err)
	}
	if looksLikeTLS(first) {
		return nil, fmt.Errorf("%w: the peer speaks TLS, and this host runs with --insecure (plain TCP): give both sides the same choice", ErrRefused)
	}
	c.SetDeadline(time.Time{})
	return &prefixConn{Conn: c, prefix: first}, nil
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// CloseWrite closes the write side, if the connection can (TCP can).
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("connection cannot close its write side alone")
}
