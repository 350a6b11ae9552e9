package checkpoint

import (
	"strings"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/linktest"
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
			a, b := linktest.New().Pipe() // buffered: each side sends its hello before reading
			defer a.Close()
			defer b.Close()
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
