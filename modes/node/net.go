package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/ftckpt/ftckpt/vmm"
	"golang.org/x/sys/unix"
)

// The guest's network on the host, and the node's links to its peer: every
// connection between primary and backup, in both modes (joins included), is
// dialled by dialPeer and accepted through secure.

// openBackend opens the host side of o's network (nil for none).
func openBackend(o *Options) (vmm.NetBackend, error) {
	switch {
	case o.OpenNet != nil:
		return o.OpenNet()
	case o.Net == "none":
		return nil, nil
	}
	return OpenBackend(o.Machine, o.Net)
}

// OpenBackend opens the host side of a guest's network, spec udp:ADDR or
// tap:NAME: a UDP front or a tap for a KVM guest, whose frames are
// Ethernet; a plain UDP socket for the software machine, whose frames are
// bare payloads.
func OpenBackend(m Machine, spec string) (vmm.NetBackend, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	var b vmm.NetBackend
	var err error
	switch {
	case m == MachineSim && kind == "udp":
		b, err = newBareUDP(arg)
	case kind == "udp":
		b, err = vmm.NewUDPFront(vmm.UDPFrontConfig{Listen: arg})
	case kind == "tap":
		b, err = vmm.OpenTap(arg)
	default:
		err = errors.New("want udp:ADDR, tap:NAME or none")
	}
	if err != nil {
		return nil, fmt.Errorf("--net %s: %w", spec, err)
	}
	return b, nil
}

// openBackendLive opens the network backend of a backup going live, and
// on a tap announces the guest's MAC (a gratuitous ARP, as QEMU does after
// a migration) so the network finds the guest on this host. The dead
// primary's host may still hold the address a moment (a process killed
// with -9 closes its sockets as it is torn down): a busy address is tried
// again for a few seconds.
func openBackendLive(ctx context.Context, o *Options) (vmm.NetBackend, error) {
	b, err := whileBusy(ctx, func() (vmm.NetBackend, error) { return openBackend(o) })
	if err != nil || b == nil {
		return b, err
	}
	if strings.HasPrefix(o.Net, "tap:") && o.Machine == MachineKVM {
		if err := b.SendFrame(vmm.GratuitousARP(vmm.DefaultGuestMAC, guestIP)); err != nil {
			b.Close()
			return nil, fmt.Errorf("announcing the guest after failover: %w", err)
		}
	}
	return b, nil
}

// guestIP is the bundled guests' address (the kv guest's default).
var guestIP = [4]byte{10, 0, 2, 15}

// whileBusy calls open until it fails with something other than
// EADDRINUSE, for about five seconds.
func whileBusy[T any](ctx context.Context, open func() (T, error)) (T, error) {
	for tries := 0; ; tries++ {
		v, err := open()
		if err == nil || !errors.Is(err, unix.EADDRINUSE) || tries == 50 {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// deferredNet forwards a device's frames to a backend chosen later: a
// backup's devices exist (their state is replicated) but reach the world
// only once it is live, its guest not running before.
type deferredNet struct {
	to atomic.Pointer[vmm.NetBackend]
}

// SendFrame implements vmm.FrameSink.
func (n *deferredNet) SendFrame(f []byte) error {
	if t := n.to.Load(); t != nil {
		return (*t).SendFrame(f)
	}
	return nil // not live: nothing leaves (the guest does not run)
}

func (n *deferredNet) set(b vmm.NetBackend) { n.to.Store(&b) }

// dialPeer connects to the peer at addr, retrying for up to within (the
// peer may be starting too), and runs the handshake: mutual TLS with
// o.TLS, then the peer's admission (checkpoint/PROTOCOL.md). A refusal, by
// either side, is not retried: it returns at once, saying why.
func dialPeer(ctx context.Context, o *Options, addr string, within time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var d net.Dialer
	for {
		raw, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			conn, err := mtls.Handshake(ctx, raw, addr, mtls.DialOptions{
				Identity: o.TLS, Proto: format.ALPN, Confirm: true, NotTLS: describePlainPeer(nil)})
			if err != nil {
				return nil, fmt.Errorf("connecting to the peer at %s: %w", addr, err)
			}
			return conn, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connecting to the peer at %s: %w", addr, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// listen opens a backup's listener, closed when ctx ends, and says where
// it listens (Options.Ready).
func listen(ctx context.Context, o *Options) (net.Listener, error) {
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", o.Listen, err)
	}
	sln := secure(o, ln, "--listen")
	context.AfterFunc(ctx, func() { sln.Close() })
	if o.Ready != nil {
		o.Ready(ln.Addr().String())
	}
	return sln, nil
}

// secure is ln accepting only peers that pass the handshake (mutual TLS
// with o.TLS, or plain TCP without): the engine's Accept never sees
// another. Refusals are logged at WARN with the reason.
func secure(o *Options, ln net.Listener, flag string) net.Listener {
	return mtls.Listen(ln, mtls.ListenOptions{
		Identity: o.TLS, Proto: format.ALPN, Confirm: true, SniffPlain: true,
		What: flag + " " + ln.Addr().String(), Log: o.log(),
		NotTLS: func(first []byte, c net.Conn) string { return describePlainPeer(c)(first) },
	})
}

// firstTLSVersion is the protocol version that brought mutual TLS: a peer
// of an older one cannot speak it.
const firstTLSVersion = 3

// describePlainPeer says what a peer that spoke the protocol in plain TCP
// to a TLS host is (an ftckpt before TLS, or one run with --insecure), or
// "" if it is not that. With c, the accepting side's connection, it reads
// the rest of the frame header if it must, and answers with a Refused
// message the peer's reader understands.
func describePlainPeer(c net.Conn) func(first []byte) string {
	return func(first []byte) string {
		if c != nil && len(first) < 8 {
			c.SetReadDeadline(time.Now().Add(time.Second))
			more := make([]byte, 8-len(first))
			n, _ := io.ReadFull(c, more)
			first = append(first[:len(first):len(first)], more[:n]...)
		}
		v, ok := format.SniffFrame(first)
		if !ok {
			return ""
		}
		if c != nil {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			format.WriteRefusal(c, "this host requires mutual TLS (--tls-cert, --tls-key, --tls-ca), and this peer spoke in plain TCP")
		}
		switch {
		case v < firstTLSVersion:
			return fmt.Sprintf("the peer speaks ftckpt protocol version %d in plain TCP: an ftckpt older than TLS (version %d); run the same release on both hosts", v, firstTLSVersion)
		case v != format.ProtocolVersion:
			return fmt.Sprintf("the peer speaks ftckpt protocol version %d in plain TCP (this host %d, with TLS): it runs with --insecure, and another release; run the same release on both hosts, with the same choice", v, format.ProtocolVersion)
		}
		return "the peer speaks in plain TCP: it runs with --insecure, and this host with TLS; give both sides the same choice"
	}
}
