package main

import (
	"fmt"
	"net"
	"sync"

	"github.com/ftckpt/ftckpt/vmm"
)

// bareUDP is the software machine's network backend: each datagram's
// payload is one frame, as the simvm guests speak (no Ethernet, IP or UDP
// headers); a frame the guest sends goes to the client that sent last.
// Frames sent before any client is known (a backup gone live re-issues the
// last replies before its clients resend) wait for the first one, up to
// maxPending.
type bareUDP struct {
	conn *net.UDPConn
	once sync.Once

	mu      sync.Mutex
	client  *net.UDPAddr
	pending [][]byte
}

const maxPending = 256

func newBareUDP(addr string) (*bareUDP, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("--net udp:%s: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("--net udp:%s: %w", addr, err)
	}
	return &bareUDP{conn: conn}, nil
}

// SendFrame implements vmm.FrameSink. Without a client yet the frame is
// dropped, as a network with no listener drops it.
func (b *bareUDP) SendFrame(frame []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.client == nil {
		if len(b.pending) < maxPending {
			b.pending = append(b.pending, append([]byte(nil), frame...))
		}
		return nil
	}
	b.conn.WriteToUDP(frame, b.client) // a lost datagram is not a device failure
	return nil
}

// heard notes the client a datagram came from, and sends it what waited.
func (b *bareUDP) heard(from *net.UDPAddr) {
	b.mu.Lock()
	defer b.mu.Unlock()
	first := b.client == nil
	b.client = from
	if first {
		for _, f := range b.pending {
			b.conn.WriteToUDP(f, from)
		}
		b.pending = nil
	}
}

// Start implements vmm.NetBackend.
func (b *bareUDP) Start(port vmm.RxPort) error {
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := b.conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			b.heard(from)
			if port.Receive(buf[:n]) {
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
