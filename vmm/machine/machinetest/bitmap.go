// Package machinetest is the test support of machines: random page sets
// and the contract every machine (KVM's and the software one) passes.
package machinetest

import (
	"math/rand"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// RandomBitmap fills a bitmap of pages pages with runs whose lengths and
// gaps are drawn around a density, so runs cross word boundaries, fill whole
// words and end at bit 63 or the last page.
func RandomBitmap(r *rand.Rand, pages uint64) *machine.Bitmap {
	b := machine.NewBitmap(pages)
	maxRun := uint64(1 + r.Intn(200))
	maxGap := uint64(1 + r.Intn(200))
	for p := uint64(r.Intn(3)); p < pages; {
		n := 1 + uint64(r.Int63n(int64(maxRun)))
		for i := uint64(0); i < n && p < pages; i++ {
			b.Set(p)
			p++
		}
		p += 1 + uint64(r.Int63n(int64(maxGap)))
	}
	return b
}
