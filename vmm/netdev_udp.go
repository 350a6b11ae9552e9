package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// The UDP front's side of the guest's virtual link.
var (
	// FrontGatewayIP is the address the front answers ARP for: the guest's
	// router to its clients.
	FrontGatewayIP = [4]byte{10, 0, 2, 2}
	// FrontGatewayMAC is the front's MAC on the guest's link.
	FrontGatewayMAC = [6]byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02}
)

// UDPFrontConfig configures a UDPFront.
type UDPFrontConfig struct {
	// Listen is the host address clients send to; "" means
	// 127.0.0.1:7777. Port 0 picks a free one (see Addr).
	Listen string
	// GuestMAC, GuestIP and GuestPort are where datagrams go; zero values
	// mean DefaultGuestMAC, 10.0.2.15 and 7777.
	GuestMAC  [6]byte
	GuestIP   [4]byte
	GuestPort uint16
}

// UDPFrontStats counts what a UDPFront did.
type UDPFrontStats struct {
	// ToGuest datagrams became frames; Oversize were too long for one
	// frame; RxDropped frames found the device's queue full.
	ToGuest, Oversize, RxDropped uint64
	// ToClients replies went back out; ARPReplies were answered; GuestDropped
	// guest frames were not for the front (malformed, not IPv4/UDP, not
	// through the gateway, …).
	ToClients, ARPReplies, GuestDropped uint64
}

// UDPFront is a userspace network backend on a host UDP socket, so that
// running a guest needs no root. It routes between the guest's virtual
// link and the host's network, for UDP only: each datagram a client sends
// to Listen reaches the guest as an Ethernet/IPv4/UDP frame from the
// client's own address and port, through the gateway (FrontGatewayMAC);
// each UDP frame the guest sends through the gateway leaves as a datagram
// to the address and port it names. The front answers the guest's ARP
// requests for FrontGatewayIP. It is a FrameSink for the guest's output.
//
// The front keeps no state about clients: a reply depends only on the
// guest's frame. That is what failover needs. The backup's front never
// heard from the primary's clients, yet the replies the guest owes them
// (re-issued at go-live, or produced later) reach them. The price is that
// the guest can send UDP to any IPv4 address the host reaches, as through
// a tap device. Clients on the host's loopback appear to the guest as
// 127.0.0.0/8 sources, which the bare-metal guests accept and a Linux
// guest would drop as martians (use a tap backend for such guests).
type UDPFront struct {
	cfg   UDPFrontConfig
	conn  *net.UDPConn
	port  atomic.Pointer[rxPortBox]
	guest udpEndpoint
	wg    sync.WaitGroup
	ipID  atomic.Uint32 // IPv4 identification of the next frame (low 16 bits)

	toGuest, oversize, rxDropped, toClients, arpReplies, guestDropped atomic.Uint64
}

type rxPortBox struct{ RxPort }

// NewUDPFront opens the front's socket. Start it to deliver to a device.
func NewUDPFront(cfg UDPFrontConfig) (*UDPFront, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:7777"
	}
	if cfg.GuestMAC == ([6]byte{}) {
		cfg.GuestMAC = DefaultGuestMAC
	}
	if cfg.GuestIP == ([4]byte{}) {
		cfg.GuestIP = [4]byte{10, 0, 2, 15}
	}
	if cfg.GuestPort == 0 {
		cfg.GuestPort = 7777
	}
	addr, err := net.ResolveUDPAddr("udp4", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("UDP front: address %q: %w", cfg.Listen, err)
	}
	conn, err := net.ListenUDP("udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("UDP front: listening on %s: %w", cfg.Listen, err)
	}
	return &UDPFront{
		cfg: cfg, conn: conn,
		guest: udpEndpoint{mac: cfg.GuestMAC, ip: cfg.GuestIP, port: cfg.GuestPort},
	}, nil
}

// Addr is the address clients send to.
func (u *UDPFront) Addr() *net.UDPAddr { return u.conn.LocalAddr().(*net.UDPAddr) }

// Stats returns the counters.
func (u *UDPFront) Stats() UDPFrontStats {
	return UDPFrontStats{
		ToGuest: u.toGuest.Load(), Oversize: u.oversize.Load(), RxDropped: u.rxDropped.Load(),
		ToClients: u.toClients.Load(), ARPReplies: u.arpReplies.Load(), GuestDropped: u.guestDropped.Load(),
	}
}

// Start implements NetBackend: a goroutine turns datagrams into frames for
// port. Start it once.
func (u *UDPFront) Start(port RxPort) error {
	if !u.port.CompareAndSwap(nil, &rxPortBox{port}) {
		return errors.New("UDP front: already started")
	}
	u.wg.Add(1)
	go u.readLoop(port)
	return nil
}

// Close implements NetBackend.
func (u *UDPFront) Close() error {
	err := u.conn.Close()
	u.wg.Wait()
	return err
}

func (u *UDPFront) readLoop(port RxPort) {
	defer u.wg.Done()
	buf := make([]byte, 65536)
	var frame []byte
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Warn("UDP front: read failed; stopping", "err", err)
			}
			return
		}
		if n > MaxUDPPayload {
			u.oversize.Add(1)
			continue
		}
		src := udpEndpoint{mac: FrontGatewayMAC, ip: from.Addr().Unmap().As4(), port: from.Port()}
		frame = udpFrame(frame[:0], src, u.guest, uint16(u.ipID.Add(1)), buf[:n])
		if !port.Receive(frame) {
			u.rxDropped.Add(1)
			continue
		}
		u.toGuest.Add(1)
		port.Poll()
	}
}

// SendFrame implements FrameSink: it answers ARP for the gateway and sends
// UDP replies to their client. Every other frame is dropped and counted;
// only a failing socket is an error.
func (u *UDPFront) SendFrame(frame []byte) error {
	if len(frame) < ethHdrLen {
		return u.drop(errFrameShort)
	}
	switch etherType(frame) {
	case etherTypeARP:
		sha, spa, tpa, err := parseARPRequest(frame)
		if err != nil {
			return u.drop(err)
		}
		if tpa != FrontGatewayIP {
			return u.drop(errors.New("ARP request for another address"))
		}
		p := u.port.Load()
		if p == nil {
			return u.drop(errors.New("front not started"))
		}
		// Queued only: SendFrame runs under the device's lock; the device
		// delivers it before its notify returns.
		if !p.Receive(arpFrame(arpOpReply, FrontGatewayMAC, FrontGatewayIP, sha, sha, spa)) {
			u.rxDropped.Add(1)
			return nil
		}
		u.arpReplies.Add(1)
		return nil
	case etherTypeIPv4:
		d, err := parseUDP(frame)
		if err != nil {
			return u.drop(err)
		}
		if d.dst.mac != FrontGatewayMAC {
			return u.drop(errors.New("not through the gateway"))
		}
		to := netip.AddrPortFrom(netip.AddrFrom4(d.dst.ip), d.dst.port)
		if a := to.Addr(); (!a.IsGlobalUnicast() && !a.IsLoopback()) || to.Port() == 0 {
			return u.drop(fmt.Errorf("no host at %v", to))
		}
		if _, err := u.conn.WriteToUDPAddrPort(d.payload, to); err != nil {
			return fmt.Errorf("UDP front: sending to %v: %w", to, err)
		}
		u.toClients.Add(1)
		return nil
	}
	return u.drop(errFrameEtherType)
}

func (u *UDPFront) drop(why error) error {
	u.guestDropped.Add(1)
	slog.Debug("UDP front: dropped a guest frame", "why", why)
	return nil
}

func etherType(f []byte) uint16 { return uint16(f[12])<<8 | uint16(f[13]) }
