package outbuf

import (
	"bytes"
	"testing"
)

func TestDataPoolClasses(t *testing.T) {
	// cap -1: too large to pool, any capacity.
	for _, c := range []struct{ n, cap int }{
		{1, 64}, {64, 64}, {65, 128}, {1500, 2048}, {4096, 4096}, {1 << 20, 1 << 20}, {1<<20 + 1, -1},
	} {
		src := bytes.Repeat([]byte{0xab}, c.n)
		p := getData(src)
		if len(p) != c.n || (c.cap >= 0 && cap(p) != c.cap) || !bytes.Equal(p, src) {
			t.Fatalf("getData(%d bytes): len %d cap %d, want len %d cap %d and a copy", c.n, len(p), cap(p), c.n, c.cap)
		}
		src[0] = 0
		if p[0] != 0xab {
			t.Fatalf("getData(%d bytes) aliases its source", c.n)
		}
		putData(p)
	}
	// A recycled slice comes back holding the new bytes only.
	putData(getData(bytes.Repeat([]byte{1}, 100)))
	if p := getData([]byte{2, 3}); !bytes.Equal(p, []byte{2, 3}) {
		t.Fatalf("getData after recycling = %v", p)
	}
	// Odd capacities are not pooled (they would break the class invariant).
	putData(make([]byte, 10, 100))
	for range 10 {
		if p := getData(make([]byte, 100)); cap(p) != 128 {
			t.Fatalf("pool handed out a slice of capacity %d for class 128", cap(p))
		}
	}
}
