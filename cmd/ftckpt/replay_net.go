package main

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/ftckpt/ftckpt/vmm"
)

// bareUDP is the software machine's network backend: each datagram's
// payload is one frame, as the simvm guests speak (no Ethernet, IP or UDP
// headers); a frame the guest sends goes to the client that sent last.
type bareUDP struct {
	conn   *net.UDPConn
	client atomic.Pointer[net.UDPAddr]
	once   sync.Once
}

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
	to := b.client.Load()
	if to == nil {
		return nil
	}
	b.conn.WriteToUDP(frame, to) // a lost datagram is not a device failure
	return nil
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
			b.client.Store(from)
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
