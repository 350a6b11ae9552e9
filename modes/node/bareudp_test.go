package node

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/sim"
)

// rxFrames is the guest's side of a bareUDP: the frames it received.
type rxFrames chan []byte

func (r rxFrames) Receive(f []byte) bool { r <- bytes.Clone(f); return true }
func (r rxFrames) Poll()                 {}

func (r rxFrames) next(t *testing.T) []byte {
	t.Helper()
	select {
	case f := <-r:
		return f
	case <-time.After(10 * time.Second): // bounds a broken front only
		t.Fatal("no frame reached the guest")
		return nil
	}
}

func startBareUDP(t *testing.T, addr string) (*bareUDP, rxFrames) {
	t.Helper()
	b, err := newBareUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	rx := make(rxFrames, 16)
	if err := b.Start(rx); err != nil {
		t.Fatal(err)
	}
	return b, rx
}

func udpClient(t *testing.T, to net.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, to.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expect reads one datagram, or fails if want is "" and one comes.
func expect(t *testing.T, c *net.UDPConn, want string) {
	t.Helper()
	wait := 10 * time.Second
	if want == "" {
		wait = 50 * time.Millisecond
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	switch {
	case want == "" && err == nil:
		t.Fatalf("a client got %q, meant for another", buf[:n])
	case want != "" && (err != nil || string(buf[:n]) != want):
		t.Fatalf("a client got %q (%v), want %q", buf[:n], err, want)
	}
}

// TestBareUDPAddressesEachClient: requests reach the guest from their
// client's address, each reply goes to the client it names, the tick
// guest's reports (zero address) to the client heard from last.
func TestBareUDPAddressesEachClient(t *testing.T) {
	b, rx := startBareUDP(t, "127.0.0.1:0")
	c1, c2 := udpClient(t, b.conn.LocalAddr()), udpClient(t, b.conn.LocalAddr())
	c1.Write([]byte("GET a"))
	f1 := rx.next(t)
	c2.Write([]byte("GET b"))
	f2 := rx.next(t)
	for _, tc := range []struct {
		f    []byte
		c    *net.UDPConn
		want string
	}{{f1, c1, "GET a"}, {f2, c2, "GET b"}} {
		from, payload, err := sim.FrameAddress(tc.f)
		if err != nil || from != tc.c.LocalAddr().(*net.UDPAddr).AddrPort() || string(payload) != tc.want {
			t.Fatalf("the guest got %q from %v (%v), want %q from %v", payload, from, err, tc.want, tc.c.LocalAddr())
		}
	}
	from2, _, _ := sim.FrameAddress(f2)
	from1, _, _ := sim.FrameAddress(f1)
	b.SendFrame(sim.Addressed(from2, []byte("2 NOTFOUND")))
	b.SendFrame(sim.Addressed(from1, []byte("1 NOTFOUND")))
	expect(t, c1, "1 NOTFOUND")
	expect(t, c2, "2 NOTFOUND")
	b.SendFrame(sim.Addressed(netip.AddrPort{}, []byte("TICK")))
	expect(t, c2, "TICK")
	expect(t, c1, "")
	b.SendFrame([]byte("ab")) // too short to name anyone: dropped
	expect(t, c1, "")
	expect(t, c2, "")
}

// TestBareUDPReplyAfterFailover: the front that takes over the address
// (a backup gone live) never heard from the client, yet the reply the
// guest owes it reaches it, and only it.
func TestBareUDPReplyAfterFailover(t *testing.T) {
	old, rx := startBareUDP(t, "127.0.0.1:0")
	addr := old.conn.LocalAddr()
	c1, c2 := udpClient(t, addr), udpClient(t, addr)
	c1.Write([]byte("INCR a"))
	from, _, _ := sim.FrameAddress(rx.next(t))
	old.Close()
	taken, _ := startBareUDP(t, addr.String())
	taken.SendFrame(sim.Addressed(from, []byte("1 VALUE 1")))
	expect(t, c1, "1 VALUE 1")
	expect(t, c2, "")
}
