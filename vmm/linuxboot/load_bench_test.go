package linuxboot

import (
	"testing"
)

// BenchmarkLoad measures Load of an 8 MiB kernel and a 32 MiB initrd into a 128 MiB slice,
// beside the floor: copying the same bytes to the same places with copy().
func BenchmarkLoad(b *testing.B) {
	s := defaultSpec()
	s.pmSize, s.initSize = 8*mib, 24*mib
	img := s.build()
	initrd := make([]byte, 32*mib)
	for i := range initrd {
		initrd[i] = byte(i)
	}
	mem := make(sliceMem, 128*mib)
	cfg := Config{Kernel: img, Initrd: initrd, Cmdline: testCmdline, MemSize: 128 * mib}
	e, err := Load(mem, cfg)
	if err != nil {
		b.Fatal(err)
	}
	total := int64(len(img) - s.setupSize() + len(initrd))

	b.Run("load", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			if _, err := Load(mem, cfg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("floor=memcpy", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			copy(mem[e.KernelAddr:], img[s.setupSize():])
			copy(mem[e.InitrdAddr:], initrd)
		}
	})
}
