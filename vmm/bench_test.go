package vmm

import (
	"fmt"
	"io"
	"testing"
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
