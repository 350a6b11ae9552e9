package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// exec assembles body at ENTRY, runs it to its hlt and returns the
// machine; any other stop fails the test.
func exec(t *testing.T, body string) *Machine {
	t.Helper()
	m, _ := execProgram(t, body)
	return m
}

func execProgram(t *testing.T, body string) (*Machine, *Program) {
	t.Helper()
	p, err := Assemble(Prelude + "\t.org ENTRY\nstart:\n" + body + "\n\thlt\n")
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewProgram(p, 16, &testEnv{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := m.Run()
	if err != nil || e.Kind != machine.ExitHalt {
		t.Fatalf("%s\nran to %v, %v", body, e, err)
	}
	return m, p
}

func TestALU(t *testing.T) {
	const neg = 0xfffffffffffffff0 // -16
	for _, c := range []struct {
		src  string
		want uint64 // r3
	}{
		{"li r1, 7\n li r2, 5\n add r3, r1, r2", 12},
		{"li r1, 7\n li r2, 5\n sub r3, r1, r2", 2},
		{"li r1, 5\n li r2, 7\n sub r3, r1, r2", 0xfffffffffffffffe},
		{"li r1, 0xf0f0\n li r2, 0xff00\n and r3, r1, r2", 0xf000},
		{"li r1, 0xf0f0\n li r2, 0xff00\n or r3, r1, r2", 0xfff0},
		{"li r1, 0xf0f0\n li r2, 0xff00\n xor r3, r1, r2", 0x0ff0},
		{"li r1, 3\n li r2, 4\n shl r3, r1, r2", 48},
		{"li r1, 3\n li r2, 68\n shl r3, r1, r2", 48}, // counts mod 64
		{"li r1, neg\n li r2, 2\n shr r3, r1, r2", neg >> 2},
		{"li r1, neg\n li r2, 2\n sar r3, r1, r2", 0xfffffffffffffffc},
		{"li r1, neg\n li r2, 3\n mul r3, r1, r2", 0xffffffffffffffd0},
		{"li r1, 100\n li r2, 7\n divu r3, r1, r2", 14},
		{"li r1, 100\n li r2, 7\n remu r3, r1, r2", 2},
		{"li r1, neg\n li r2, 7\n divu r3, r1, r2", neg / 7},
		{"li r1, 7\n add r3, r1, -8", 0xffffffffffffffff}, // immediates sign-extend
		{"li r1, 7\n sub r3, r1, 10", 0xfffffffffffffffd},
		{"li r1, -1\n and r3, r1, -256", 0xffffffffffffff00},
		{"li r1, 1\n or r3, r1, 0x7ffffff0", 0x7ffffff1},
		{"li r1, 0xff\n xor r3, r1, 0x0f", 0xf0},
		{"li r1, 1\n shl r3, r1, 63", 1 << 63},
		{"li r1, neg\n shr r3, r1, 60", 0xf},
		{"li r1, neg\n sar r3, r1, 60", 0xffffffffffffffff},
		{"li r1, 6\n mul r3, r1, -2", 0xfffffffffffffff4},
		{"li r1, 99\n divu r3, r1, 10", 9},
		{"li r1, 99\n remu r3, r1, 10", 9},
		{"li r1, 0x1122334455667788\n mov r3, r1", 0x1122334455667788},
		{"li r3, 'A' + 1", 'B'},
	} {
		src := fmt.Sprintf("\t.equ neg, %#x\n%s", uint64(neg), c.src)
		if got := exec(t, src).cpu.R[3]; got != c.want {
			t.Errorf("%s: r3 = %#x, want %#x", c.src, got, c.want)
		}
	}
}

func TestBranches(t *testing.T) {
	values := []uint64{0, 1, 2, 0x7fffffffffffffff, 0x8000000000000000, 0xffffffffffffffff, 0xfffffffffffffffe}
	// The model, written from the x86 definitions, not from condHolds.
	conds := map[string]func(x, y uint64) bool{
		"je": func(x, y uint64) bool { return x == y }, "jne": func(x, y uint64) bool { return x != y },
		"jl": func(x, y uint64) bool { return int64(x) < int64(y) }, "jge": func(x, y uint64) bool { return int64(x) >= int64(y) },
		"jle": func(x, y uint64) bool { return int64(x) <= int64(y) }, "jg": func(x, y uint64) bool { return int64(x) > int64(y) },
		"jb": func(x, y uint64) bool { return x < y }, "jae": func(x, y uint64) bool { return x >= y },
		"jbe": func(x, y uint64) bool { return x <= y }, "ja": func(x, y uint64) bool { return x > y },
	}
	for name, model := range conds {
		for _, x := range values {
			for _, y := range values {
				m := exec(t, fmt.Sprintf(` li r1, %#x
	li r2, %#x
	li r3, 0
	cmp r1, r2
	%s taken
	jmp done
taken:	li r3, 1
done:`, x, y, name))
				if got, want := m.cpu.R[3] == 1, model(x, y); got != want {
					t.Errorf("cmp %#x, %#x; %s: taken=%v, want %v (flags %#x)", x, y, name, got, want, m.cpu.Flags)
				}
			}
		}
	}
	// The immediate form compares with the sign-extended immediate, and
	// ALU operations leave the flags alone.
	m := exec(t, " li r1, -1\n li r3, 0\n cmp r1, -1\n add r1, r1, 5\n jne skip\n li r3, 1\nskip:")
	if m.cpu.R[3] != 1 {
		t.Errorf("cmp r1, -1 with r1 = -1 then add: not equal (flags %#x)", m.cpu.Flags)
	}
}

func TestLoadsStoresStack(t *testing.T) {
	m, p := execProgram(t, ` li r1, buf
	li r2, 0x8877665544332211
	st64 [r1], r2
	ld8 r3, [r1+7]
	ld16 r4, [r1+1]
	ld32 r5, [r1+4]
	ld64 r6, [buf]
	li r7, -1
	st8 [r1+8], r7
	st16 [r1+10], r7
	st32 [r1+12], r7
	add r1, r1, 24
	st64 [r1-8], r7
	ld8 r8, [r1-16]
	; the stack
	li r9, 0xabc
	push r9
	pop r10
	call fn
	li r12, fn
	call r12
	li r13, over
	jmp r13
	li r14, 999
over:
	jmp end
fn:
	add r11, r11, 1
	ret
	.align 8
buf:	.space 32
end:`)
	r := m.cpu.R
	want := map[int]uint64{3: 0x88, 4: 0x3322, 5: 0x88776655, 6: 0x8877665544332211, 8: 0xff, 10: 0xabc, 11: 2, 14: 0}
	for i, w := range want {
		if r[i] != w {
			t.Errorf("r%d = %#x, want %#x", i, r[i], w)
		}
	}
	if r[15] != uint64(len(m.mem)) {
		t.Errorf("sp = %#x after balanced pushes and calls, want %#x", r[15], len(m.mem))
	}
	buf := p.Symbols["buf"]
	if got := m.mem[buf+8 : buf+24]; string(got) != "\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff" {
		t.Errorf("stores wrote % x", got)
	}
}

func TestFaults(t *testing.T) {
	for _, c := range []struct{ src, why string }{
		{".quad 0", "invalid opcode"},
		{".quad 0x01000001", "unused field"},        // nop with c set
		{".quad 0x00001108 ; mov r17?", "register"}, // mov r0, r17: b above r15
		{".quad 0x00002008", "register"},            // mov r0, r32
		{".quad 0x0a0d", "condition"},               // jcc with condition 10
		{".quad 0x0000000003000012", "size"},        // in r0, 0, size 3
		{".quad 0x0000000000110040", "register"},    // ld8 r0, [r17]
		{"li r1, 0\n divu r2, r1, r1", "division by zero"},
		{"li r1, 0\n remu r2, r2, 0", "division by zero"},
		{"li r1, ram_end - 4\n ld64 r2, [r1]", "straddles"},
		{"li r1, ram_end - 2\n st32 [r1], r2", "straddles"},
		{"li r1, ram_end\n jmp r1", "fetch outside RAM"},
		{"li r1, ram_end - 8\n jmp r1", "invalid opcode"},
		{"li sp, 4\n push r1", "stack"},
		{"li sp, ram_end\n pop r1", "stack"},
		{"li sp, ram_end - 8\n iret", "stack"},
		{"li sp, 0\n call start", "stack"},
	} {
		src := fmt.Sprintf("\t.equ ram_end, %d\n\t.org ENTRY\nstart:\n %s\n hlt\n", 16*PageSize, c.src)
		r := newProgramRig(t, src, 16)
		e, err := r.m.Run()
		var f *Fault
		if !errors.As(err, &f) || !containsFold(f.Reason, c.why) {
			t.Errorf("%s: ran to %v, %v; want a fault about %q", c.src, e, err, c.why)
			continue
		}
		if f.RIP != r.m.cpu.PC {
			t.Errorf("%s: fault at %#x but pc %#x", c.src, f.RIP, r.m.cpu.PC)
		}
		before, _ := r.m.SaveState()
		_, err2 := r.m.Run()
		after, _ := r.m.SaveState()
		if err2 == nil || err2.Error() != err.Error() || string(before) != string(after) {
			t.Errorf("%s: running again: %v (first: %v), state changed: %v", c.src, err2, err, string(before) != string(after))
		}
	}
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func TestPortAndMMIOExits(t *testing.T) {
	r := newProgramRig(t, ` .org ENTRY
start:
	li r1, 0x1234567890
	outw 0x77, r1
	inb r2, 0x78
	li r3, ram_end + 0x10
	st32 [r3-8], r1
	ld16 r4, [r3]
	li r5, MMIO_BASE + 0x1000
	ld64 r6, [r5]
	inl r7, 0x79
	hlt
	.equ ram_end, 16*PAGE_SIZE
`, 16)
	m := r.m
	step := func(want machine.Exit, data uint64) machine.Exit {
		t.Helper()
		e, err := m.Run()
		if err != nil {
			t.Fatal(err)
		}
		want.RIP = e.RIP // checked below
		if e.Kind != want.Kind || e.Addr != want.Addr || e.Size != want.Size {
			t.Fatalf("exit %v, want %v", e, want)
		}
		mnemonic := map[machine.ExitKind]string{machine.ExitPIORead: "in", machine.ExitPIOWrite: "out", machine.ExitMMIORead: "ld", machine.ExitMMIOWrite: "st"}[e.Kind]
		if w, _, _ := Disassemble(m.mem[e.RIP:]); !strings.HasPrefix(w, mnemonic) {
			t.Errorf("exit %v names rip %#x: %s", e, e.RIP, w)
		}
		if !e.Kind.IsRead() && binary.LittleEndian.Uint64(e.Data[:]) != data {
			t.Fatalf("exit %v data %#x, want %#x", e, e.Data, data)
		}
		if _, err := m.Run(); err == nil {
			t.Fatalf("Run with the access of %v pending did not fail", e)
		}
		bad := e
		bad.Addr++
		if err := m.Complete(&bad); err == nil {
			t.Fatalf("Complete accepted %v for %v", bad, e)
		}
		if err := m.Complete(&e); err != nil {
			t.Fatal(err)
		}
		if err := m.Complete(&e); err == nil {
			t.Fatal("a second Complete was accepted")
		}
		return e
	}
	step(machine.Exit{Kind: machine.ExitPIOWrite, Addr: 0x77, Size: 2}, 0x7890)
	e := step(machine.Exit{Kind: machine.ExitPIORead, Addr: 0x78, Size: 1}, 0)
	if m.cpu.R[2] != 0xff || e.Data != [8]byte{0xff} {
		t.Errorf("unmapped port read %#x (data % x), want 0xff", m.cpu.R[2], e.Data)
	}
	step(machine.Exit{Kind: machine.ExitMMIOWrite, Addr: 16*PageSize + 8, Size: 4}, 0x34567890)
	step(machine.Exit{Kind: machine.ExitMMIORead, Addr: 16*PageSize + 0x10, Size: 2}, 0)
	if m.cpu.R[4] != 0xffff {
		t.Errorf("unmapped MMIO read %#x, want 0xffff", m.cpu.R[4])
	}
	step(machine.Exit{Kind: machine.ExitMMIORead, Addr: MMIOBase + 0x1000, Size: 8}, 0)
	if m.cpu.R[6] != ^uint64(0) {
		t.Errorf("MMIO read beyond the device: %#x", m.cpu.R[6])
	}
	step(machine.Exit{Kind: machine.ExitPIORead, Addr: 0x79, Size: 4}, 0)
	if m.cpu.R[7] != 0xffffffff {
		t.Errorf("inl of nothing: %#x", m.cpu.R[7])
	}
	if e, err := m.Run(); err != nil || e.Kind != machine.ExitHalt {
		t.Fatalf("%v %v", e, err)
	}
	if got := m.Instructions(); got != 10 {
		t.Errorf("Instructions() = %d, want 10", got)
	}
}

func TestDirtyTracking(t *testing.T) {
	r := newProgramRig(t, ` .org ENTRY
start:
	li r1, 3*PAGE_SIZE - 4
	li r2, 0x1111
	st64 [r1], r2		; straddles pages 2 and 3
	hlt
	li r2, 0x2222
	li r3, 5*PAGE_SIZE
	st8 [r3], r2
	hlt
	li r2, 0x1111
	st64 [r1], r2		; the same contents again
	hlt
`, 16)
	m := r.m
	sig := func() machine.Signature {
		s, err := m.Signature()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	runHalt := func() {
		t.Helper()
		e, err := m.Run()
		if err != nil || e.Kind != machine.ExitHalt {
			t.Fatalf("%v %v", e, err)
		}
		m.cpu.Halted = false // no interrupt to wake it: resume by hand
	}
	empty := sig().Dirty
	runHalt()
	if got := dirtyPages(m); fmt.Sprint(got) != "[2 3]" {
		t.Errorf("dirty pages %v, want [2 3]", got)
	}
	first := sig().Dirty
	if first == empty {
		t.Error("writes did not change the dirty hash")
	}
	if err := m.Mark(); err != nil {
		t.Fatal(err)
	}
	if sig().Dirty != empty {
		t.Error("Mark did not reset the dirty hash")
	}
	runHalt()
	if got := dirtyPages(m); fmt.Sprint(got) != "[5]" {
		t.Errorf("dirty pages %v, want [5]", got)
	}
	m.Mark()
	// Same pages, same contents: the same hash as the first interval,
	// which also shows the cached page hashes were refreshed.
	runHalt()
	if got := sig().Dirty; got != first {
		t.Errorf("equal dirty pages hash %#x, first time %#x", got, first)
	}
	m.mem[2*PageSize] ^= 1 // an untracked write: Signature must not see it, as documented, until the page is written again
	m.mem[2*PageSize] ^= 1
	// Regs hash follows every register.
	base := sig()
	for i := range 16 {
		m.cpu.R[i] ^= 1 << i
		if sig().Regs == base.Regs {
			t.Errorf("r%d does not change the register hash", i)
		}
		m.cpu.R[i] ^= 1 << i
	}
	m.cpu.Shadow = true
	if sig().Regs == base.Regs {
		t.Error("the sti shadow does not change the register hash")
	}
}

func dirtyPages(m *Machine) []int {
	var pages []int
	for p := range len(m.mem) / PageSize {
		if m.dirty[p/64]&(1<<(p%64)) != 0 {
			pages = append(pages, p)
		}
	}
	return pages
}
