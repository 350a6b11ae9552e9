package checkpoint

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestLinkHelloRefusesAMismatchedPeer: two primaries, or guests of other
// sizes, never start a stream.
func TestLinkHelloRefusesAMismatchedPeer(t *testing.T) {
	for _, tc := range []struct {
		name  string
		peer  Hello
		wantA string
	}{
		{"same role", Hello{Role: RolePrimary, MemPages: 16}, "peer is also a primary"},
		{"other memory", Hello{Role: RoleBackup, MemPages: 32}, "32 pages of memory, ours 16"},
		{"other machine", Hello{Role: RoleBackup, MemPages: 16, Machine: "disk=64M"}, `peer's machine is "disk=64M", ours ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tcpPair(t)
			go func() {
				lb := NewLink(b, 0, nil)
				lb.Hello(tc.peer, time.Second) //nolint:errcheck // the other side judges
			}()
			_, err := NewLink(a, 0, nil).Hello(Hello{Role: RolePrimary, MemPages: 16}, time.Second)
			if err == nil || !strings.Contains(err.Error(), tc.wantA) {
				t.Fatalf("hello: %v, want %q", err, tc.wantA)
			}
		})
	}
}

// tcpPair returns both ends of a loopback TCP connection (buffered, unlike
// net.Pipe: each side sends its hello before reading the other's).
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		done <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-done
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
