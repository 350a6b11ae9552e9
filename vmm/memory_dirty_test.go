package vmm

import (
	"math/bits"
	"math/rand"
	"sync"
	"testing"
)

// TestTakeVMMDirtyMatchesWrites: whatever pages WriteAt and WritePage touch
// (single pages, runs across words and summary words, the last page), the
// next TakeVMMDirty reports exactly those, once; CountVMMDirty counts them
// before, taking nothing.
func TestTakeVMMDirtyMatchesWrites(t *testing.T) {
	m, err := NewGuestMemory(64 << 20) // 16 Ki pages: 256 words, 4 summary words
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := rand.New(rand.NewSource(3))
	dst := make([]uint64, (m.Pages()+63)/64)
	for round := 0; round < 200; round++ {
		want := map[uint64]bool{}
		for k := r.Intn(20); k > 0; k-- {
			p := uint64(r.Int63n(int64(m.Pages())))
			n := 1 + r.Intn(3*PageSize)
			if r.Intn(4) == 0 {
				p = m.Pages() - 1
			}
			if p*PageSize+uint64(n) > uint64(m.Size()) {
				n = int(uint64(m.Size()) - p*PageSize)
			}
			if _, err := m.WriteAt(make([]byte, n), int64(p*PageSize)); err != nil {
				t.Fatal(err)
			}
			for q := p; q <= (p*PageSize+uint64(n)-1)/PageSize; q++ {
				want[q] = true
			}
		}
		if got := m.CountVMMDirty(); got != len(want) {
			t.Fatalf("round %d: CountVMMDirty counts %d pages, %d were written", round, got, len(want))
		}
		clear(dst)
		if got := m.TakeVMMDirty(dst); got != len(want) {
			t.Fatalf("round %d: TakeVMMDirty counts %d pages, %d were written", round, got, len(want))
		}
		n := 0
		for i, w := range dst {
			n += bits.OnesCount64(w)
			for ; w != 0; w &= w - 1 {
				if p := uint64(i*64 + bits.TrailingZeros64(w)); !want[p] {
					t.Fatalf("round %d: page %d reported and not written", round, p)
				}
			}
		}
		if n != len(want) {
			t.Fatalf("round %d: %d pages reported, %d written", round, n, len(want))
		}
		clear(dst)
		if got := m.TakeVMMDirty(dst); got != 0 {
			t.Fatalf("round %d: a second TakeVMMDirty reports %d pages", round, got)
		}
	}
}

// TestTakeVMMDirtyLosesNoConcurrentWrite: pages written while TakeVMMDirty
// runs are reported by it or by the next one.
func TestTakeVMMDirtyLosesNoConcurrentWrite(t *testing.T) {
	m, err := NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	seen := make([]uint64, (m.Pages()+63)/64)
	written := make([][]uint64, 4)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for g := range written {
		written[g] = make([]uint64, len(seen))
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(g)))
			for i := 0; i < 20000; i++ {
				p := uint64(r.Int63n(int64(m.Pages())))
				m.WritePage(p, make([]byte, PageSize))
				written[g][p/64] |= 1 << (p % 64)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		m.TakeVMMDirty(seen)
	}
	m.TakeVMMDirty(seen)
	for g := range written {
		for i, w := range written[g] {
			if lost := w &^ seen[i]; lost != 0 {
				t.Fatalf("page %d written and never reported", i*64+bits.TrailingZeros64(lost))
			}
		}
	}
}
