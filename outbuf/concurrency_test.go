package outbuf

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// releaseChecker checks, at every release, that the output's position was
// acknowledged before the release began, that positions never go back, and
// that each holder's outputs come out complete and in order. Sinks call it
// under the buffer's release lock, but it locks anyway.
type releaseChecker struct {
	acked   atomic.Uint64 // highest position passed to Commit, set before the call
	anyAck  atomic.Bool
	mu      sync.Mutex
	lastPos uint64
	nextSeq map[uint32]uint32
	count   int
	errs    []string
}

func (c *releaseChecker) see(data []byte) {
	pos, holder, seq := untag(data)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.anyAck.Load() || pos > c.acked.Load() {
		c.errs = append(c.errs, fmt.Sprintf("position %d released with %d acked (any: %v)", pos, c.acked.Load(), c.anyAck.Load()))
	}
	if pos < c.lastPos {
		c.errs = append(c.errs, fmt.Sprintf("position %d released after %d", pos, c.lastPos))
	}
	c.lastPos = pos
	if seq != c.nextSeq[holder] {
		c.errs = append(c.errs, fmt.Sprintf("holder %d: sequence %d released, want %d", holder, seq, c.nextSeq[holder]))
	}
	c.nextSeq[holder] = seq + 1
	c.count++
}

// Holders on several goroutines emit frames and writes at the current epoch
// (read under a barrier, as vCPUs are paused at an epoch's end), an epoch
// advancer moves on, and a committer acks random positions, sometimes the
// current epoch so that Holds race their own release. Every release must be
// of an acked position, in emission order, complete.
func TestConcurrentReleaseNeverEarlyAndInOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"roomy", DefaultConfig()},
		{"tight", Config{MaxBytes: 256, MaxOutputs: 6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const holders, perHolder = 4, 1500
			r := newRig(t, tc.cfg)
			chk := &releaseChecker{nextSeq: map[uint32]uint32{}}
			r.rec.onSend = func(f []byte) error { chk.see(f); return nil }
			r.disk.OnWrite = func(p []byte, _ int64) error { chk.see(p); return nil }

			var barrier sync.RWMutex // held for reading while holding, for writing to advance
			var epoch atomic.Uint64
			epoch.Store(1)
			var holdersDone atomic.Int32
			var wg sync.WaitGroup
			errc := make(chan error, holders)
			for h := range uint32(holders) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer holdersDone.Add(1)
					rng := rand.New(rand.NewPCG(uint64(h), 1))
					for seq := range uint32(perHolder) {
						barrier.RLock()
						pos := epoch.Load()
						data := tagged(pos, h, seq, 16+rng.IntN(48))
						out := NetFrame(data)
						if rng.IntN(3) == 0 {
							out = DiskWrite(data, int64(h)*4096+int64(rng.IntN(8000)))
						}
						err := r.b.Hold(context.Background(), pos, out)
						barrier.RUnlock()
						if err != nil {
							errc <- fmt.Errorf("holder %d seq %d: %w", h, seq, err)
							return
						}
					}
				}()
			}
			wg.Add(2)
			go func() { // epoch advancer
				defer wg.Done()
				for holdersDone.Load() < holders {
					barrier.Lock()
					epoch.Add(1)
					barrier.Unlock()
					runtime.Gosched()
				}
			}()
			go func() { // ack reader
				defer wg.Done()
				rng := rand.New(rand.NewPCG(99, 2))
				for holdersDone.Load() < holders {
					cur := epoch.Load()
					c := cur - min(uint64(rng.IntN(3)), cur) // sometimes the current epoch, sometimes lower than before
					if c > chk.acked.Load() || !chk.anyAck.Load() {
						chk.acked.Store(c)
					}
					chk.anyAck.Store(true)
					if err := r.b.Commit(c); err != nil {
						errc <- fmt.Errorf("commit %d: %w", c, err)
						return
					}
					runtime.Gosched()
				}
			}()
			wg.Wait()
			close(errc)
			for err := range errc {
				t.Fatal(err)
			}
			final := epoch.Load()
			chk.acked.Store(final)
			mustCommit(t, r.b, final)

			chk.mu.Lock()
			defer chk.mu.Unlock()
			for i, e := range chk.errs {
				if i == 10 {
					t.Fatalf("... and %d more", len(chk.errs)-10)
				}
				t.Error(e)
			}
			if chk.count != holders*perHolder {
				t.Fatalf("released %d outputs, want %d", chk.count, holders*perHolder)
			}
			if s := r.b.Stats(); s.HeldOutputs != 0 || s.HeldBytes != 0 || s.Released != holders*perHolder {
				t.Fatalf("final stats %+v", s)
			}
		})
	}
}
