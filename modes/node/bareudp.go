package node

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/sim"
)

// bareUDP is the software machine's network backend, on a host UDP socket.
// A datagram from a client reaches the guest as a frame from the client's
// address (sim.Addressed: the software machine's guests speak no Ethernet, IP or UDP);
// a frame the guest sends leaves as a datagram to the address it names,
// or, for the zero address (the tick guest's reports), to the client heard
// from last, if any. Nothing else is remembered, so a backup gone live
// delivers the replies its guest re-issues to clients it never heard from.
type bareUDP struct {
	conn *net.UDPConn
	once sync.Once
	last atomic.Pointer[netip.AddrPort] // the client heard from last
}

func newBareUDP(addr string) (*bareUDP, error) {
	ua, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp4", ua)
	if err != nil {
		return nil, err
	}
	return &bareUDP{conn: conn}, nil
}

// SendFrame implements vmm.FrameSink. A frame without an address, or to
// the zero address before any client was heard from, is dropped, as a
// network drops what it cannot deliver; so is one the socket refuses.
func (b *bareUDP) SendFrame(frame []byte) error {
	to, payload, err := sim.FrameAddress(frame)
	if err != nil {
		slog.Debug("software machine's network: dropped a guest frame", "err", err)
		return nil
	}
	if !to.IsValid() {
		last := b.last.Load()
		if last == nil {
			return nil
		}
		to = *last
	}
	b.conn.WriteToUDPAddrPort(payload, to) // a lost datagram is not a device failure
	return nil
}

// Start implements vmm.NetBackend.
func (b *bareUDP) Start(port vmm.RxPort) error {
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := b.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			b.last.Store(&from)
			if port.Receive(sim.Addressed(from, buf[:n])) {
				port.Poll()
			}
		}
	}()
	return nil
}

// Close implements vmm.NetBackend.
func (b *bareUDP) Close() error {
	var err error
	b.once.Do(func() { err = b.conn.Close() })
	return err
}
