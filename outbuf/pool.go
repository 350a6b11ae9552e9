package outbuf

import (
	"math/bits"
	"sync"
)

// Held outputs' bytes are recycled through per-size-class pools: allocating
// (and zeroing, and collecting) a fresh slice per output costs more than the
// copy itself, several times over on the machines ftckpt runs on (see
// BenchmarkHoldCommit's clone floor). Class i holds slices of capacity
// 1<<(minClass+i); outputs above 1<<maxClass are allocated plainly.
//
// A slice goes back to its pool only when nothing refers to it any more: the
// output was released (sinks do not retain what they are given, see NetSink
// and Disk) or dropped, and it has left the queue and the overlay.
const (
	minClass = 6  // 64 B
	maxClass = 20 // 1 MiB
)

var dataPools [maxClass - minClass + 1]sync.Pool

// class returns the pool index for n bytes, or -1 if n is too large to pool.
func class(n int) int {
	c := max(bits.Len(uint(n-1)), minClass)
	if n <= 0 || c > maxClass {
		return -1
	}
	return c - minClass
}

// getData returns a slice of length n holding a copy of src[:n].
func getData(src []byte) []byte {
	n := len(src)
	c := class(n)
	if c < 0 {
		return append([]byte(nil), src...)
	}
	var p []byte
	if v := dataPools[c].Get(); v != nil {
		p = (*v.(*[]byte))[:n]
	} else {
		p = make([]byte, n, 1<<(c+minClass))
	}
	copy(p, src)
	return p
}

// putData recycles p. Precondition: nothing refers to p's array any more.
func putData(p []byte) {
	c := class(cap(p))
	if c < 0 || cap(p) != 1<<(c+minClass) {
		return
	}
	p = p[:0]
	dataPools[c].Put(&p)
}
