package vmm

import (
	"fmt"
	"io"
	"slices"
	"testing"
	"time"
)

// BenchmarkSnapshotMemory measures writing a snapshot's memory as the amount
// of touched guest memory grows, beside a plain copy of the same bytes (the
// floor). It needs no KVM: memory is saved by the VMM alone.
func BenchmarkSnapshotMemory(b *testing.B) {
	for _, mib := range []int{16, 128, 1024} {
		mem, err := NewGuestMemory(2 << 30)
		if err != nil {
			b.Fatal(err)
		}
		page := make([]byte, PageSize)
		for i := range page {
			page[i] = byte(i)
		}
		pages := uint64(mib) << 20 / PageSize
		for p := uint64(0); p < pages; p++ {
			mem.WritePage(p*(mem.Pages()/pages), page)
		}
		b.Run(fmt.Sprintf("dirty=%dMiB", mib), func(b *testing.B) {
			b.SetBytes(int64(mib) << 20)
			for i := 0; i < b.N; i++ {
				if err := writeSnapshot(io.Discard, []byte("state"), mem); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("dirty=%dMiB/floor=memcpy", mib), func(b *testing.B) {
			dst := make([]byte, PageSize)
			b.SetBytes(int64(mib) << 20)
			for i := 0; i < b.N; i++ {
				for p := uint64(0); p < pages; p++ {
					copy(dst, mem.Page(p*(mem.Pages()/pages)))
				}
			}
		})
		mem.Close()
	}
}

// BenchmarkPauseSave is the machine's part of a checkpoint pause: stop
// every vCPU, capture the machine state, resume, running the guest 5 ms
// between pauses: one that keeps every vCPU busy (smp), and with 4 vCPUs
// one whose vCPU 0 writes while the others halt (memtouch: a halted vCPU
// sleeps in KVM and must be woken to stop). "asked": Pause, then
// SaveState hands each vCPU's thread the capture; "ahead": PauseSaving, the
// vCPUs capture on their threads as they stop (the primary copies pages
// meanwhile; here nothing does). It reports each part's p50, the whole
// pause's p50 and p99, and the ioctl floor: one vCPU's capture timed on its
// own thread.
func BenchmarkPauseSave(b *testing.B) {
	type shape struct {
		name, guest string
		vcpus       int
		params      map[string]string
	}
	busy := map[string]string{"iters": "1000"}
	for _, sh := range []shape{
		{"vcpus=1/busy", "smp", 1, busy},
		{"vcpus=4/busy", "smp", 4, busy},
		{"vcpus=4/3-halted", "memtouch", 4, map[string]string{"ws": "64", "dirty": "64", "every": "1000000000"}},
	} {
		for _, ahead := range []bool{false, true} {
			name := "asked"
			if ahead {
				name = "ahead"
			}
			b.Run(sh.name+"/"+name, func(b *testing.B) {
				m, _ := newGuestMachine(b, sh.guest, sh.vcpus, sh.params)
				if err := m.Start(); err != nil {
					b.Fatal(err)
				}
				pause := m.Pause
				if ahead {
					pause = m.PauseSaving
				}
				var stop, state, resume, total []time.Duration
				for i := 0; i < b.N; i++ {
					time.Sleep(5 * time.Millisecond)
					t0 := time.Now()
					if err := pause(); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if _, err := m.SaveState(); err != nil {
						b.Fatal(err)
					}
					t2 := time.Now()
					if err := m.Resume(); err != nil {
						b.Fatal(err)
					}
					t3 := time.Now()
					stop, state, resume = append(stop, t1.Sub(t0)), append(state, t2.Sub(t1)), append(resume, t3.Sub(t2))
					total = append(total, t3.Sub(t0))
				}
				if err := m.Pause(); err != nil {
					b.Fatal(err)
				}
				var gets, byRun time.Duration
				m.vcpus[0].do(func() error {
					t0 := time.Now()
					err := m.vcpus[0].capture(false)
					t1 := time.Now()
					if err == nil && m.regsByRun {
						err = m.vcpus[0].capture(true)
					}
					gets, byRun = t1.Sub(t0), time.Since(t1)
					return err
				})
				us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
				b.ReportMetric(us(quantile(stop, 0.5)), "stop-µs")
				b.ReportMetric(us(quantile(state, 0.5)), "state-µs")
				b.ReportMetric(us(quantile(resume, 0.5)), "resume-µs")
				b.ReportMetric(us(quantile(total, 0.5)), "pause-p50-µs")
				b.ReportMetric(us(quantile(total, 0.99)), "pause-p99-µs")
				b.ReportMetric(us(gets), "vcpu0-ioctls-µs")
				if m.regsByRun {
					b.ReportMetric(us(byRun), "vcpu0-byrun-µs")
				}
			})
		}
	}
}

// quantile is the q-quantile (0 to 1) of ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}
