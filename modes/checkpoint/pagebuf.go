package checkpoint

import (
	format "github.com/ftckpt/ftckpt/checkpoint"
	"golang.org/x/sys/unix"
)

// pageBuffers hands each capture a buffer for its dirty pages whose memory
// is already faulted in, so that a pause copies pages instead of taking a
// page fault per page of a fresh buffer: on this project's nested test
// host a fault cost 2-20 µs, and a pause copying 32,768 pages into a fresh
// buffer took 0.5 s instead of 10 ms. Buffers the sender is done with come
// back (recycle); a new one is made and faulted in while the guest runs
// (prepare), with room to spare, so that a dirty count creeping up does
// not make one every epoch.
//
// ready is touched only by the epoch loop's goroutine; spare is a channel
// the sender also sends on.
type pageBuffers struct {
	spare chan []byte
	ready []byte
}

// newPageBuffers keeps up to keep buffers the sender is done with.
func newPageBuffers(keep int) pageBuffers {
	return pageBuffers{spare: make(chan []byte, keep)}
}

// take returns an empty buffer with room for n bytes, for a pause: the
// one prepare made if it is large enough, else a spare one if large
// enough, else a new one, which costs the pause its faults. (Not a spare
// grown: slices.Grow would copy its whole capacity over, in one move.)
func (b *pageBuffers) take(n int) []byte {
	if cap(b.ready) >= n {
		buf := b.ready
		b.ready = nil
		return buf[:0]
	}
	select {
	case buf := <-b.spare:
		if cap(buf) >= n {
			return buf[:0]
		}
	default:
	}
	return make([]byte, 0, n)
}

// prepare makes sure, while the guest runs, that the next take has a
// faulted-in buffer for expect pages and some more (an eighth, at least
// minSpare): the largest spare one if that is enough, else a new one for
// half as many again. It reports whether it made one, which takes time:
// on this project's nested test host, 0.3 s for 30,000 pages.
func (b *pageBuffers) prepare(expect int) (made bool) {
	need := (expect + max(expect/8, minSpare)) * format.PageSize
	for range len(b.spare) {
		if cap(b.ready) >= need {
			return false
		}
		buf := <-b.spare
		if cap(buf) > cap(b.ready) {
			b.ready, buf = buf, b.ready
		}
		b.recycle(buf) // the smaller one, back for later (or dropped)
	}
	if cap(b.ready) >= need {
		return false
	}
	b.ready = make([]byte, 0, (expect+max(expect/2, minSpare))*format.PageSize)
	faultIn(b.ready[:cap(b.ready)])
	return true
}

// minSpare is the fewest pages a prepared buffer has beyond those
// expected: a small count grows fast in relative terms between the count
// and the pause (a sync's commit counts just after a harvest).
const minSpare = 256

// recycle gives a capture's page buffer back for a later capture, or drops
// it if enough are kept. Safe from any goroutine.
func (b *pageBuffers) recycle(buf []byte) {
	if buf == nil {
		return
	}
	select {
	case b.spare <- buf:
	default:
	}
}

// faultIn has the kernel fault in every page of buf for writing, a chunk
// per call where it can (MADV_POPULATE_WRITE, Linux 5.14), else by writing
// a byte to each page. Go's large allocations start on a page, as madvise
// requires; buf's contents do not change.
func faultIn(buf []byte) {
	for len(buf) > 0 {
		n := min(len(buf), populateChunk)
		if unix.Madvise(buf[:n], unix.MADV_POPULATE_WRITE) != nil {
			for i := 0; i < len(buf); i += format.PageSize {
				buf[i] = 0
			}
			return
		}
		buf = buf[n:]
	}
}

// populateChunk is the most faultIn populates in one call: the call holds
// the process's mmap lock, which the Go runtime takes to grow the heap, so
// a call over hundreds of MiB stalled every goroutine that allocated
// (heartbeats 0.9 s apart, measured on this project's nested host, where
// a fault costs up to 20 µs; 10 ms with 2 MiB chunks).
const populateChunk = 2 << 20
