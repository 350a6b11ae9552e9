package outbuf

import (
	"math/bits"
	"time"
)

// Stats is a snapshot of a Buffer's state and history. Plain data.
type Stats struct {
	// HeldOutputs and HeldBytes are what is held now (including a release
	// pass's outputs still in their sinks).
	HeldOutputs int
	HeldBytes   int64
	// OldestHeld is the position of the oldest held output; meaningful only
	// if HeldOutputs > 0.
	OldestHeld uint64
	// Waiting is the number of Holds blocked for room.
	Waiting int
	// Committed is the highest committed position; meaningful only if
	// AnyCommitted.
	Committed    uint64
	AnyCommitted bool
	// Released and ReleasedBytes count outputs handed to sinks; Dropped
	// counts outputs discarded by Drop, held or waiting.
	Released      uint64
	ReleasedBytes uint64
	Dropped       uint64
	// Delay is, for every released output, the time from its Hold call
	// (including any wait for room) to the return of its sink.
	Delay Histogram
	// Failed is the error that failed the buffer, or nil.
	Failed error
}

// Stats returns a snapshot of the buffer.
func (b *Buffer) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := Stats{
		HeldOutputs:   len(b.queue),
		HeldBytes:     b.heldBytes,
		Waiting:       len(b.waiters),
		Committed:     b.committed,
		AnyCommitted:  b.anyCommit,
		Released:      b.released,
		ReleasedBytes: b.releasedBytes,
		Dropped:       b.dropped,
		Delay:         b.delay,
		Failed:        b.failed,
	}
	if len(b.queue) > 0 {
		s.OldestHeld = b.queue[0].pos
	}
	return s
}

// Histogram counts durations in power-of-two buckets: bucket 0 holds
// durations under 1 ns (zero or negative, from a clock that stepped back),
// bucket i > 0 holds [2^(i-1), 2^i) ns. Plain data; the zero value is empty.
type Histogram struct {
	Buckets [64]uint64
	Count   uint64
	Max     time.Duration
}

func (h *Histogram) add(d time.Duration) {
	i := 0
	if d > 0 {
		i = bits.Len64(uint64(d))
	}
	h.Buckets[i]++
	h.Count++
	h.Max = max(h.Max, d)
}

// Quantile returns an upper bound on the q-quantile (0 < q <= 1) of the
// recorded durations: the top of the bucket holding it, capped at Max, so at
// most twice the true value. It returns 0 for an empty histogram.
func (h Histogram) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	rank := uint64(q * float64(h.Count))
	rank = min(max(rank, 1), h.Count)
	var seen uint64
	for i, n := range h.Buckets {
		seen += n
		if seen >= rank {
			if i == 0 {
				return 0
			}
			top := time.Duration(uint64(1)<<i - 1)
			if top > h.Max {
				return h.Max
			}
			return top
		}
	}
	return h.Max
}
