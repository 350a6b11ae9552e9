package checkpoint

import "runtime"

// AppendChunked appends src to dst as append does, but CopyChunk bytes at
// a time with the Go scheduler let in between. One copy cannot be
// preempted, so a stop-the-world (the GC's) waits for it, and every other
// goroutine with it — a link's heartbeats too: one copy of 128 MiB held
// them 0.3 s on this project's nested test host, 9 ms in chunks.
func AppendChunked(dst, src []byte) []byte {
	for len(src) > CopyChunk {
		dst = append(dst, src[:CopyChunk]...)
		src = src[CopyChunk:]
		runtime.Gosched()
	}
	return append(dst, src...)
}

// CopyChunk is the most AppendChunked copies in one go.
const CopyChunk = 16 << 20
