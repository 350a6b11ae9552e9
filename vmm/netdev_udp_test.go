package vmm

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"
)

// portRecorder is an RxPort that hands received frames to the test.
type portRecorder struct {
	mu     sync.Mutex
	frames chan []byte
	queued [][]byte
}

func newPortRecorder() *portRecorder { return &portRecorder{frames: make(chan []byte, 64)} }

func (p *portRecorder) Receive(f []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.queued = append(p.queued, bytes.Clone(f))
	return true
}

func (p *portRecorder) Poll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.queued {
		p.frames <- f
	}
	p.queued = nil
}

// next waits for a frame; the deadline only turns a hang into a failure.
func (p *portRecorder) next(t *testing.T) []byte {
	t.Helper()
	select {
	case f := <-p.frames:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no frame reached the guest")
		return nil
	}
}

func newTestFront(t *testing.T) (*UDPFront, *portRecorder) {
	u, err := NewUDPFront(UDPFrontConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	p := newPortRecorder()
	if err := u.Start(p); err != nil {
		t.Fatal(err)
	}
	return u, p
}

func dialFront(t *testing.T, u *UDPFront) *net.UDPConn {
	c, err := net.DialUDP("udp4", nil, u.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readReply(t *testing.T, c *net.UDPConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	return string(buf[:n])
}

// guestReply builds the guest's answer to a frame the front sent it.
func guestReply(t *testing.T, to []byte, payload string) []byte {
	t.Helper()
	d, err := parseUDP(to)
	if err != nil {
		t.Fatal(err)
	}
	return udpFrame(nil, d.dst, d.src, 1, []byte(payload))
}

func TestUDPFrontRoundTrip(t *testing.T) {
	u, p := newTestFront(t)
	c1, c2 := dialFront(t, u), dialFront(t, u)
	c1.Write([]byte("GET a"))
	f1 := p.next(t)
	c2.Write([]byte("SET b 2"))
	f2 := p.next(t)

	// The frames: to the guest's MAC/IP/port, from each client's own
	// address through the gateway's MAC, valid IPv4 header checksum.
	for i, tc := range []struct {
		f []byte
		c *net.UDPConn
	}{{f1, c1}, {f2, c2}} {
		ip := tc.f[ethHdrLen : ethHdrLen+ipv4HdrLen]
		if inetChecksum(ip, 0) != 0 {
			t.Fatalf("frame %d: bad IPv4 header checksum", i)
		}
		d, err := parseUDP(tc.f)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		client := tc.c.LocalAddr().(*net.UDPAddr)
		if d.dst != (udpEndpoint{DefaultGuestMAC, [4]byte{10, 0, 2, 15}, 7777}) ||
			d.src != (udpEndpoint{FrontGatewayMAC, [4]byte(client.IP.To4()), uint16(client.Port)}) {
			t.Fatalf("frame %d: %+v → %+v", i, d.src, d.dst)
		}
	}
	d1, _ := parseUDP(f1)
	d2, _ := parseUDP(f2)
	if string(d1.payload) != "GET a" || string(d2.payload) != "SET b 2" {
		t.Fatalf("payloads %q %q", d1.payload, d2.payload)
	}
	// Replies go to the right client, in either order.
	if err := u.SendFrame(guestReply(t, f2, "2 OK")); err != nil {
		t.Fatal(err)
	}
	if err := u.SendFrame(guestReply(t, f1, "1 NOTFOUND")); err != nil {
		t.Fatal(err)
	}
	if got := readReply(t, c2); got != "2 OK" {
		t.Fatalf("client 2 got %q", got)
	}
	if got := readReply(t, c1); got != "1 NOTFOUND" {
		t.Fatalf("client 1 got %q", got)
	}
	if s := u.Stats(); s.ToGuest != 2 || s.ToClients != 2 || s.GuestDropped != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestUDPFrontReplyAfterFailover: the front that takes over the address
// (on the backup's host) never heard from the client, yet the reply the
// guest owes it (re-issued at go-live) reaches it, and a second client
// that has not sent to the new front yet gets nothing meant for the first.
func TestUDPFrontReplyAfterFailover(t *testing.T) {
	old, p := newTestFront(t)
	c1, c2 := dialFront(t, old), dialFront(t, old)
	c1.Write([]byte("INCR a"))
	f := p.next(t)
	addr := old.Addr().String()
	old.Close() // the primary's host dies

	taken, err := NewUDPFront(UDPFrontConfig{Listen: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	if err := taken.Start(newPortRecorder()); err != nil {
		t.Fatal(err)
	}
	if err := taken.SendFrame(guestReply(t, f, "1 VALUE 1")); err != nil {
		t.Fatal(err)
	}
	if got := readReply(t, c1); got != "1 VALUE 1" {
		t.Fatalf("the client got %q", got)
	}
	c2.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, err := c2.Read(make([]byte, 64)); err == nil {
		t.Fatalf("the other client got %d bytes", n)
	}
}

func TestUDPFrontARPAndDrops(t *testing.T) {
	u, p := newTestFront(t)
	guestIP := [4]byte{10, 0, 2, 15}
	req := arpFrame(arpOpRequest, DefaultGuestMAC, guestIP, broadcastMAC, [6]byte{}, FrontGatewayIP)
	if err := u.SendFrame(req); err != nil {
		t.Fatal(err)
	}
	p.Poll() // the device would deliver it in the same exit
	r := p.next(t)
	a := r[ethHdrLen:]
	if binary.BigEndian.Uint16(a[6:]) != arpOpReply || !bytes.Equal(a[8:14], FrontGatewayMAC[:]) ||
		!bytes.Equal(a[14:18], FrontGatewayIP[:]) || !bytes.Equal(r[:6], DefaultGuestMAC[:]) || !bytes.Equal(a[24:28], guestIP[:]) {
		t.Fatalf("ARP reply % x", r)
	}

	c := dialFront(t, u)
	c.Write([]byte("x"))
	good := guestReply(t, p.next(t), "ok")
	spoil := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	bad := map[string][]byte{
		"runt":         good[:10],
		"IPv6":         spoil(func(b []byte) { b[12], b[13] = 0x86, 0xdd }),
		"truncated IP": good[:ethHdrLen+10],
		"IP checksum":  spoil(func(b []byte) { b[ethHdrLen+10]++ }),
		"IP version":   spoil(func(b []byte) { b[ethHdrLen] = 0x65 }),
		"total length": spoil(func(b []byte) { b[ethHdrLen+2] = 0xff }),
		"fragment":     spoil(func(b []byte) { b[ethHdrLen+6] = 0x20 }),
		"TCP":          spoil(func(b []byte) { b[ethHdrLen+9] = 6 }),
		"UDP checksum": spoil(func(b []byte) { b[len(b)-1]++ }),
		"UDP length":   spoil(func(b []byte) { b[ethHdrLen+ipv4HdrLen+4] = 0xff }),
		"to port 0": spoil(func(b []byte) {
			b[ethHdrLen+ipv4HdrLen+2], b[ethHdrLen+ipv4HdrLen+3] = 0, 0
			b[ethHdrLen+ipv4HdrLen+6], b[ethHdrLen+ipv4HdrLen+7] = 0, 0 // no UDP checksum
		}),
		"not through the gateway": udpFrame(nil, udpEndpoint{DefaultGuestMAC, guestIP, 7777}, udpEndpoint{[6]byte{2, 0, 0, 0, 0, 1}, [4]byte{127, 0, 0, 1}, 4000}, 1, []byte("x")),
		"to multicast":            udpFrame(nil, udpEndpoint{DefaultGuestMAC, guestIP, 7777}, udpEndpoint{FrontGatewayMAC, [4]byte{224, 0, 0, 1}, 4000}, 1, []byte("x")),
		"to broadcast":            udpFrame(nil, udpEndpoint{DefaultGuestMAC, guestIP, 7777}, udpEndpoint{FrontGatewayMAC, [4]byte{255, 255, 255, 255}, 4000}, 1, []byte("x")),
		"to 0.0.0.0":              udpFrame(nil, udpEndpoint{DefaultGuestMAC, guestIP, 7777}, udpEndpoint{FrontGatewayMAC, [4]byte{}, 4000}, 1, []byte("x")),
		"ARP for another":         arpFrame(arpOpRequest, DefaultGuestMAC, guestIP, broadcastMAC, [6]byte{}, [4]byte{10, 0, 2, 3}),
		"ARP reply":               arpFrame(arpOpReply, DefaultGuestMAC, guestIP, broadcastMAC, [6]byte{}, FrontGatewayIP),
	}
	// Spoilt IPv4 headers get a correct checksum, so the later check is
	// what drops them.
	for _, name := range []string{"IP version", "total length", "fragment", "TCP"} {
		b := bad[name]
		binary.BigEndian.PutUint16(b[ethHdrLen+10:], 0)
		binary.BigEndian.PutUint16(b[ethHdrLen+10:], inetChecksum(b[ethHdrLen:ethHdrLen+ipv4HdrLen], 0))
	}
	for name, f := range bad {
		before := u.Stats().GuestDropped
		if err := u.SendFrame(f); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if u.Stats().GuestDropped != before+1 {
			t.Errorf("%s: not dropped", name)
		}
	}
	// The unspoilt one still goes through.
	if err := u.SendFrame(good); err != nil || readReply(t, c) != "ok" {
		t.Fatalf("good reply: %v", err)
	}
	// Oversize datagrams never reach the guest.
	c.Write(make([]byte, MaxUDPPayload+1))
	c.Write([]byte("small"))
	if d, _ := parseUDP(p.next(t)); string(d.payload) != "small" || u.Stats().Oversize != 1 {
		t.Fatal("oversize datagram was not dropped")
	}
}

func TestGratuitousARP(t *testing.T) {
	mac, ip := [6]byte{2, 3, 4, 5, 6, 7}, [4]byte{10, 0, 0, 9}
	f := GratuitousARP(mac, ip)
	sha, spa, tpa, err := parseARPRequest(f)
	if err != nil || sha != mac || spa != ip || tpa != ip || !bytes.Equal(f[:6], broadcastMAC[:]) || len(f) != 60 {
		t.Fatalf("% x: %v", f, err)
	}
}

// TestUDPFrameChecksums checks udpFrame against an independent sum.
func TestUDPFrameChecksums(t *testing.T) {
	for n := 0; n < 40; n++ {
		payload := bytes.Repeat([]byte{byte(n*7 + 1)}, n)
		f := udpFrame(nil, udpEndpoint{FrontGatewayMAC, FrontGatewayIP, 40000}, udpEndpoint{DefaultGuestMAC, [4]byte{10, 0, 2, 15}, 7777}, uint16(n), payload)
		var sum uint32
		ip := f[ethHdrLen:]
		for i := 0; i < ipv4HdrLen; i += 2 {
			sum += uint32(ip[i])<<8 | uint32(ip[i+1])
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			t.Fatalf("n=%d: IPv4 header sums to %#x", n, sum)
		}
		if _, err := parseUDP(f); err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
	}
}
