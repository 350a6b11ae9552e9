package cow

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkSnapshot measures what a pause pays to snapshot n contiguous
// pages (the write protection: Snapshot's call) beside what it would pay to
// copy them (memcpy of the same pages, in cache and out of it: the floor),
// and how long the background copy then takes with no writer, in 4 KiB
// pages and in huge pages (as guest memory asks for). Without KVM:
// a guest's pages also have KVM's mappings dropped, which adds to the
// protection.
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{1024, 8192, 32768} {
		for _, m := range []struct {
			name    string
			mapping func(testing.TB, int) ([]byte, *Region)
		}{{"4KiB", mapping}, {"huge", hugeMapping}} {
			b.Run(fmt.Sprintf("pages=%d/%s", n, m.name), func(b *testing.B) {
				benchmarkSnapshot(b, m.mapping, n)
			})
		}
	}
}

func benchmarkSnapshot(b *testing.B, mapping func(testing.TB, int) ([]byte, *Region), n int) {
	_, r := mapping(b, 4*n) // cold copies walk other pages in between
	pfns := make([]uint64, n)
	for i := range pfns {
		pfns[i] = uint64(i)
	}
	dst := make([]byte, n*PageSize)
	var protect, background, warm, cold time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		s, err := r.Snapshot(pfns, dst)
		if err != nil {
			b.Fatal(err)
		}
		protect += time.Since(start)
		if err := s.Wait(); err != nil {
			b.Fatal(err)
		}
		background += s.Took()
		start = time.Now()
		copy(dst, r.mem[:n*PageSize])
		warm += time.Since(start)
		copy(dst, r.mem[2*n*PageSize:]) // evicts the first n pages, mostly
		start = time.Now()
		copy(dst, r.mem[:n*PageSize])
		cold += time.Since(start)
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
	b.ReportMetric(per(protect), "protect-µs")
	b.ReportMetric(per(background), "copied-after-µs")
	b.ReportMetric(per(warm), "memcpy-warm-µs")
	b.ReportMetric(per(cold), "memcpy-after-others-µs")
}
