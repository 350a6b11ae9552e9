package sim

import (
	"fmt"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// walkProgram is the tick guest's work loop alone: r3 steps of an
// xorshift64 walk adding into the words of a 16-page area, 14
// instructions a step, then hlt.
const walkProgram = `
	.org ENTRY
start:
	li r4, area
	li r11, 16*512-1
	li r14, 0x9e3779b97f4a7c15
loop:
	shl r6, r14, 13
	xor r14, r14, r6
	shr r6, r14, 7
	xor r14, r14, r6
	shl r6, r14, 17
	xor r14, r14, r6
	and r6, r14, r11
	shl r6, r6, 3
	add r6, r6, r4
	ld64 r7, [r6]
	add r7, r7, r14
	st64 [r6], r7
	sub r3, r3, 1
	cmp r3, 0
	jne loop
	hlt
	.align PAGE_SIZE
area:
`

// nativeWalk is walkProgram in Go: the floor.
func nativeWalk(area []uint64, n int) {
	x := uint64(0x9e3779b97f4a7c15)
	for range n {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		area[x&(16*512-1)] += x
	}
}

// BenchmarkInterpreter runs walkProgram: one op is one step of the walk
// (15 instructions with the loop's branch). It reports guest instructions
// per second and the slowdown against the same walk in Go.
func BenchmarkInterpreter(b *testing.B) {
	p, err := Assemble(Prelude + walkProgram)
	if err != nil {
		b.Fatal(err)
	}
	m, err := NewProgram(p, 32, &testEnv{})
	if err != nil {
		b.Fatal(err)
	}
	m.cpu.R[3] = uint64(b.N)
	b.ResetTimer()
	start := time.Now()
	e, err := m.Run()
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil || e.Kind != machine.ExitHalt {
		b.Fatalf("%v %v", e, err)
	}
	area := make([]uint64, 16*512)
	nstart := time.Now()
	nativeWalk(area, b.N)
	native := time.Since(nstart)
	b.ReportMetric(float64(m.Instructions())/elapsed.Seconds()/1e6, "Minstr/s")
	b.ReportMetric(float64(elapsed)/float64(max(native, 1)), "x-native")
}

// BenchmarkSignature measures Signature after one word was written in
// each of dirty pages, against copying those pages (the floor).
func BenchmarkSignature(b *testing.B) {
	for _, dirty := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("dirty=%d", dirty), func(b *testing.B) {
			m, err := NewProgram(&Program{Entry: EntryBase}, 1024, &testEnv{})
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, dirty*PageSize)
			start := time.Now()
			for i := range b.N {
				for p := range dirty {
					m.write64(uint64(p*4*PageSize+i%PageSize&^7), uint64(i))
				}
				if _, err := m.Signature(); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			cstart := time.Now()
			for range b.N {
				for p := range dirty {
					copy(dst[p*PageSize:(p+1)*PageSize], m.mem[p*4*PageSize:])
				}
			}
			b.ReportMetric(float64(elapsed)/float64(max(time.Since(cstart), 1)), "x-copy")
		})
	}
}

// BenchmarkSaveRestore is one SaveState and one RestoreState.
func BenchmarkSaveRestore(b *testing.B) {
	m := busyMachine(b)
	for b.Loop() {
		st, _ := m.SaveState()
		if err := m.RestoreState(st); err != nil {
			b.Fatal(err)
		}
	}
}
