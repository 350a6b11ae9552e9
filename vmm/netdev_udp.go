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
	// FrontGatewayIP is the address the front answers ARP for and sends
	// from; the guest replies to it.
	FrontGatewayIP = [4]byte{10, 0, 2, 2}
	// FrontGatewayMAC is the front's MAC on the guest's link.
	FrontGatewayMAC = [6]byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02}
)

// frontFirstPort is the gateway-side UDP port of client slot 0.
const frontFirstPort = 32768

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
	// MaxClients bounds the clients remembered; 0 means 1024. When full,
	// a new client takes the slot of the one that arrived longest ago.
	MaxClients int
}

// UDPFrontStats counts what a UDPFront did.
type UDPFrontStats struct {
	// ToGuest datagrams became frames; Oversize were too long for one
	// frame; RxDropped frames found the device's queue full.
	ToGuest, Oversize, RxDropped uint64
	// ToClients replies went back out; ARPReplies were answered; GuestDropped
	// guest frames were not for the front (malformed, not IPv4/UDP, to an
	// unknown client port, …).
	ToClients, ARPReplies, GuestDropped uint64
}

// UDPFront is a userspace network backend on a host UDP socket, so that
// running a guest needs no root: each datagram a client sends to Listen
// reaches the guest as an Ethernet/IPv4/UDP frame from FrontGatewayIP, from
// a port the front assigned to that client, and the guest's UDP replies to
// that port go back to the client as datagrams. The front answers the
// guest's ARP requests for FrontGatewayIP. It is a FrameSink for the
// guest's output.
type UDPFront struct {
	cfg   UDPFrontConfig
	conn  *net.UDPConn
	port  atomic.Pointer[rxPortBox]
	guest udpEndpoint
	gw    udpEndpoint
	wg    sync.WaitGroup

	// mu protects the client table and ipID.
	mu      sync.Mutex
	clients []netip.AddrPort // by slot; zero: free
	slots   map[netip.AddrPort]int
	next    int
	ipID    uint16

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
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 1024
	}
	if cfg.MaxClients > 65536-frontFirstPort {
		return nil, fmt.Errorf("UDP front: %d clients, at most %d", cfg.MaxClients, 65536-frontFirstPort)
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
		guest:   udpEndpoint{mac: cfg.GuestMAC, ip: cfg.GuestIP, port: cfg.GuestPort},
		gw:      udpEndpoint{mac: FrontGatewayMAC, ip: FrontGatewayIP},
		clients: make([]netip.AddrPort, cfg.MaxClients),
		slots:   map[netip.AddrPort]int{},
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
		src, id := u.client(from)
		frame = udpFrame(frame[:0], src, u.guest, id, buf[:n])
		if !port.Receive(frame) {
			u.rxDropped.Add(1)
			continue
		}
		u.toGuest.Add(1)
		port.Poll()
	}
}

// client returns the gateway-side endpoint assigned to a client and the
// next IPv4 id.
func (u *UDPFront) client(from netip.AddrPort) (udpEndpoint, uint16) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	u.mu.Lock()
	defer u.mu.Unlock()
	slot, ok := u.slots[from]
	if !ok {
		slot = u.next
		u.next = (u.next + 1) % len(u.clients)
		if old := u.clients[slot]; old.IsValid() {
			delete(u.slots, old)
		}
		u.clients[slot] = from
		u.slots[from] = slot
	}
	u.ipID++
	src := u.gw
	src.port = uint16(frontFirstPort + slot)
	return src, u.ipID
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
		if d.dst.ip != FrontGatewayIP || d.dst.mac != FrontGatewayMAC {
			return u.drop(errors.New("not addressed to the gateway"))
		}
		slot := int(d.dst.port) - frontFirstPort
		u.mu.Lock()
		var to netip.AddrPort
		if slot >= 0 && slot < len(u.clients) {
			to = u.clients[slot]
		}
		u.mu.Unlock()
		if !to.IsValid() {
			return u.drop(fmt.Errorf("no client at port %d", d.dst.port))
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
