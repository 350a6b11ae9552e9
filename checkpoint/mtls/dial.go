package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// DialOptions configure the dialling side of a connection.
type DialOptions struct {
	// Identity is the host's; nil dials plain TCP (--insecure).
	Identity *Identity
	// Proto is the protocol and version spoken (ALPN).
	Proto string
	// Confirm waits for the accepting side's Admitted (see Admitted).
	Confirm bool
	// Timeout bounds the handshake; 0 is DefaultTimeout.
	Timeout time.Duration
	// NotTLS, if set, describes a peer that answered with first (up to 16
	// bytes) instead of TLS, or returns "" if it does not know it.
	NotTLS func(first []byte) string
}

// errNotAdmitted is an accepting side that answered the handshake with
// something other than Admitted.
var errNotAdmitted = errors.New("the peer did not confirm the handshake")

// Handshake runs the dialling side's handshake on raw, a connection to
// addr (HOST:PORT, the host the peer's certificate must be for), and
// returns the connection to use: a *tls.Conn, or raw itself with no
// Identity. On failure it closes raw; a refusal, by either side, wraps
// ErrRefused and says why.
func Handshake(ctx context.Context, raw net.Conn, addr string, o DialOptions) (net.Conn, error) {
	if o.Identity == nil {
		return raw, nil
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		raw.Close()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rec := &recorder{Conn: raw}
	tc := tls.Client(rec, o.Identity.ClientConfig(host, o.Proto))
	fail := func(err error) (net.Conn, error) {
		raw.Close()
		if ctx.Err() != nil {
			if cerr := context.Cause(ctx); errors.Is(cerr, context.DeadlineExceeded) {
				return nil, fmt.Errorf("TLS handshake with %s: no answer within %v", addr, o.Timeout)
			}
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, refusal(err, rec.first, o.NotTLS, addr))
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(err)
	}
	if o.Confirm {
		var b [1]byte
		if _, err := io.ReadFull(tc, b[:]); err != nil {
			return fail(err)
		}
		if b[0] != Admitted {
			return fail(fmt.Errorf("%w: it sent %#x", errNotAdmitted, b[0]))
		}
	}
	if !stop() {
		return fail(context.DeadlineExceeded)
	}
	raw.SetDeadline(time.Time{})
	return tc, nil
}

// Dial connects to addr over TCP and runs Handshake.
func Dial(ctx context.Context, addr string, o DialOptions) (net.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return Handshake(ctx, raw, addr, o)
}
