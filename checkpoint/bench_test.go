package checkpoint

import (
	"bytes"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// benchPages is the dirty set of every benchmark: 1024 pages, 4 MiB.
const benchPages = 1024

// benchData is one workload: two versions of the dirty pages, so that
// alternating between them makes every page differ from the cache by the
// workload's change on every iteration.
type benchData struct {
	h    *harness
	base []byte // the guest as the backup (and the cache) hold it
	vers [2][]byte
	sync bool // zero pages: encode as a sync round (cache invalid), see below
}

// newBenchData builds the workload for c over a guest whose pages start
// random (incompressible), like memtouch's buffer:
//   - fewbytes: the versions differ by 16 random bytes per page
//   - random:   both versions are independent random pages
//   - zero:     both versions are zero; a zero page equal to the cache is
//     not sent at all, so each iteration is a sync round (cache invalid),
//     which measures the zero check itself.
func newBenchData(b *testing.B, c change) *benchData {
	h := newHarness(b, benchPages, 99)
	for pfn := range h.pages {
		h.mutate(pfn, changeRandom)
	}
	h.fullSync()
	d := &benchData{h: h, base: bytes.Clone(h.mem), sync: c == changeZero}
	for i := range d.vers {
		for pfn := range h.pages {
			h.mutate(pfn, c)
		}
		d.vers[i] = bytes.Clone(h.mem)
	}
	return d
}

var benchKinds = []change{changeFewBytes, changeRandom, changeZero}

// BenchmarkEncode is the primary's pipeline: choose an encoding for every
// dirty page, build the checkpoint, update the cache. MB/s is guest data.
func BenchmarkEncode(b *testing.B) {
	for _, c := range benchKinds {
		b.Run("kind="+c.String(), func(b *testing.B) {
			d := newBenchData(b, c)
			e, h := d.h.enc, d.h
			pfns := allPages(benchPages)
			var out []byte
			b.SetBytes(benchPages * PageSize)
			b.ReportAllocs()
			shipped := 0
			// Iteration -1 grows the output buffer; it is not timed.
			for i := -1; i < b.N; i++ {
				if i == 0 {
					b.ResetTimer()
					shipped = 0
				}
				mem := d.vers[(i+2)%2]
				hd := Header{Kind: KindEpoch, Generation: h.gen, Epoch: h.epoch + 1}
				var machine []byte = []byte("m")
				if d.sync {
					hd = Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: h.gen, Epoch: h.epoch + 1}
					machine = nil
				}
				if err := e.Begin(out, hd); err != nil {
					b.Fatal(err)
				}
				for _, p := range pfns {
					if err := e.AddPage(p, mem[p*PageSize:(p+1)*PageSize]); err != nil {
						b.Fatal(err)
					}
				}
				var err error
				if out, err = e.Finish(machine, false); err != nil {
					b.Fatal(err)
				}
				if !d.sync {
					h.epoch++
				}
				shipped += len(out)
			}
			b.ReportMetric(float64(shipped)/float64(b.N)/benchPages, "bytes/page")
		})
	}
}

// BenchmarkMemcpyFloor copies the same dirty pages: the least any pipeline
// that looks at every byte can cost.
func BenchmarkMemcpyFloor(b *testing.B) {
	src := make([]byte, benchPages*PageSize)
	dst := make([]byte, len(src))
	for i := range src {
		src[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(src)))
	b.ResetTimer()
	for range b.N {
		copy(dst, src)
	}
}

// BenchmarkRawLZ4Floor compresses the same pages with a reused lz4
// Compressor, one block per page, and nothing else.
func BenchmarkRawLZ4Floor(b *testing.B) {
	for _, c := range benchKinds {
		b.Run("kind="+c.String(), func(b *testing.B) {
			d := newBenchData(b, c)
			var comp lz4.Compressor
			dst := make([]byte, lz4.CompressBlockBound(PageSize))
			b.SetBytes(benchPages * PageSize)
			b.ReportAllocs()
			b.ResetTimer()
			shipped := 0
			for i := range b.N {
				mem := d.vers[i%2]
				for p := 0; p < len(mem); p += PageSize {
					n, err := comp.CompressBlock(mem[p:p+PageSize], dst)
					if err != nil {
						b.Fatal(err)
					}
					shipped += n
				}
			}
			b.ReportMetric(float64(shipped)/float64(b.N)/benchPages, "bytes/page")
		})
	}
}

// BenchmarkBytesShipped reports, for each workload, the bytes per page
// each single encoding would ship for the change from the backup's copy,
// and what the encoder ships by picking (record framing included).
func BenchmarkBytesShipped(b *testing.B) {
	for _, c := range benchKinds {
		b.Run("kind="+c.String(), func(b *testing.B) {
			d := newBenchData(b, c)
			var comp lz4.Compressor
			dst := make([]byte, lz4.CompressBlockBound(PageSize))
			xor := make([]byte, PageSize)
			var raw, lz, xlz int
			b.SetBytes(benchPages * PageSize)
			for range b.N {
				raw, lz, xlz = 0, 0, 0
				for p := 0; p < len(d.base); p += PageSize {
					old, cur := d.base[p:p+PageSize], d.vers[0][p:p+PageSize]
					raw += PageSize
					n, _ := comp.CompressBlock(cur, dst)
					lz += n
					for i := range xor {
						xor[i] = cur[i] ^ old[i]
					}
					n, _ = comp.CompressBlock(xor, dst)
					xlz += n
				}
			}
			b.ReportMetric(float64(raw)/benchPages, "raw-B/page")
			b.ReportMetric(float64(lz)/benchPages, "lz4-B/page")
			b.ReportMetric(float64(xlz)/benchPages, "xorlz4-B/page")

			// What the encoder ships for the same change: the cache holds base.
			h := d.h
			if err := h.enc.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: h.epoch + 1}); err != nil {
				b.Fatal(err)
			}
			for pfn := range uint64(benchPages) {
				if err := h.enc.AddPage(pfn, d.vers[0][pfn*PageSize:(pfn+1)*PageSize]); err != nil {
					b.Fatal(err)
				}
			}
			out, err := h.enc.Finish([]byte("m"), false)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(len(out))/benchPages, "picked-B/page")
			b.ReportMetric(float64(raw)/float64(len(out)), "ratio-vs-raw")
		})
	}
}

// BenchmarkApply is the backup: decode, verify, stage and apply one epoch
// of 1024 dirty pages. The backup's position is stepped back after each
// apply so the same checkpoint is accepted again (its XOR deltas then
// toggle the pages, which costs the same).
func BenchmarkApply(b *testing.B) {
	for _, c := range benchKinds {
		b.Run("kind="+c.String(), func(b *testing.B) {
			d := newBenchData(b, c)
			h := d.h
			if err := h.enc.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: h.epoch + 1}); err != nil {
				b.Fatal(err)
			}
			for pfn := range uint64(benchPages) {
				if err := h.enc.AddPage(pfn, d.vers[0][pfn*PageSize:(pfn+1)*PageSize]); err != nil {
					b.Fatal(err)
				}
			}
			ck, err := h.enc.Finish([]byte("m"), false)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(benchPages * PageSize)
			b.ReportAllocs()
			b.ReportMetric(float64(len(ck))/benchPages, "bytes/page")
			if _, err := h.bk.Receive(ck); err != nil { // grows the staging buffers
				b.Fatal(err)
			}
			h.bk.status.Epoch--
			b.ResetTimer()
			for range b.N {
				if _, err := h.bk.Receive(ck); err != nil {
					b.Fatal(err)
				}
				h.bk.status.Epoch--
			}
		})
	}
}
