package outbuf

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// discard is a NetSink and Disk that keep nothing, so benchmarks measure the
// buffer, not the sink. Reads return zeros.
type discard struct{}

func (discard) SendFrame([]byte) error                    { return nil }
func (discard) WriteAt(p []byte, _ int64) (int, error)    { return len(p), nil }
func (discard) ReadAt(p []byte, _ int64) (n int, _ error) { clear(p); return len(p), nil }

type acceptAll struct{}

func (acceptAll) Check(uint64) error { return nil }

func benchBuffer(b *testing.B) *Buffer {
	buf, err := New(DefaultConfig(), Env{Fence: acceptAll{}, Net: discard{}, Disk: discard{}, Clock: SystemClock{}})
	if err != nil {
		b.Fatal(err)
	}
	return buf
}

var benchSizes = []int{64, 1500, 4096, 65536}

// BenchmarkHoldCommit: one output held and committed at a time (replay mode,
// an ack per exit), beside the floors: a plain copy of the same bytes, and an
// allocating copy (Hold must own its bytes).
func BenchmarkHoldCommit(b *testing.B) {
	ctx := context.Background()
	for _, size := range benchSizes {
		src := bytes.Repeat([]byte{0x5a}, size)
		b.Run(fmt.Sprintf("floor=memcpy/size=%d", size), func(b *testing.B) {
			dst := make([]byte, size)
			b.SetBytes(int64(size))
			for b.Loop() {
				copy(dst, src)
			}
		})
		b.Run(fmt.Sprintf("floor=clone/size=%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			var keep []byte
			for b.Loop() {
				keep = bytes.Clone(src)
			}
			_ = keep
		})
		for _, kind := range []Kind{KindNetFrame, KindDiskWrite} {
			name := map[Kind]string{KindNetFrame: "net", KindDiskWrite: "disk"}[kind]
			b.Run(fmt.Sprintf("kind=%s/size=%d", name, size), func(b *testing.B) {
				buf := benchBuffer(b)
				b.SetBytes(int64(size))
				pos := uint64(0)
				for b.Loop() {
					out := Output{Kind: kind, Data: src}
					if kind == KindDiskWrite {
						out.Off = int64(pos%256) * int64(size)
					}
					if err := buf.Hold(ctx, pos, out); err != nil {
						b.Fatal(err)
					}
					if err := buf.Commit(pos); err != nil {
						b.Fatal(err)
					}
					pos++
				}
			})
		}
	}
}

// BenchmarkHoldCommitBatch: 64 outputs per commit, as an epoch's worth of
// frames released by one ack. Per-output numbers.
func BenchmarkHoldCommitBatch(b *testing.B) {
	ctx := context.Background()
	const batch = 64
	for _, size := range benchSizes {
		src := bytes.Repeat([]byte{0x5a}, size)
		b.Run(fmt.Sprintf("kind=net/size=%d", size), func(b *testing.B) {
			buf := benchBuffer(b)
			b.SetBytes(int64(size))
			pos := uint64(0)
			i := 0
			for b.Loop() {
				if err := buf.Hold(ctx, pos, NetFrame(src)); err != nil {
					b.Fatal(err)
				}
				if i++; i%batch == 0 {
					if err := buf.Commit(pos); err != nil {
						b.Fatal(err)
					}
					pos++
				}
			}
		})
	}
}

// BenchmarkReadAt: a 4 KiB guest read with held writes scattered over a 1 GiB
// disk, beside the floor of the same read with nothing held.
func BenchmarkReadAt(b *testing.B) {
	ctx := context.Background()
	for _, held := range []int{0, 1000, 30000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			buf := benchBuffer(b)
			w := make([]byte, 512)
			for i := range held {
				off := int64(uint64(i)*2654435761%(1<<30)) &^ 511
				if err := buf.Hold(ctx, 1, DiskWrite(w, off)); err != nil {
					b.Fatal(err)
				}
			}
			p := make([]byte, 4096)
			b.SetBytes(int64(len(p)))
			i := int64(0)
			for b.Loop() {
				if _, err := buf.ReadAt(p, (i*4096)%(1<<30)); err != nil {
					b.Fatal(err)
				}
				i += 7919
			}
		})
	}
}
