package sim

import (
	"encoding/binary"
	"strings"
	"testing"
)

// everyForm has one line of every instruction form.
var everyForm = []string{
	"nop", "hlt", "sti", "cli", "iret", "ret",
	"li r3, 0x1122334455667788", "mov r1, r15",
	"add r1, r2, r3", "sub r4, r5, r6", "and r7, r8, r9", "or r10, r11, r12", "xor r13, r14, r15",
	"shl r1, r2, r3", "shr r1, r2, r3", "sar r1, r2, r3", "mul r1, r2, r3", "divu r1, r2, r3", "remu r1, r2, r3",
	"add r1, r2, -5", "sub r1, r2, 2147483647", "and r1, r2, -2147483648", "or r1, r2, 1", "xor r1, r2, 1",
	"shl r1, r2, 3", "shr r1, r2, 3", "sar r1, r2, 3", "mul r1, r2, 3", "divu r1, r2, 3", "remu r1, r2, 3",
	"cmp r1, r2", "cmp r1, -1", "jmp 0x1000", "jmp r4", "call 0xfffffff8", "call r5",
	"je 0x10", "jne 0x10", "jl 0x10", "jge 0x10", "jle 0x10", "jg 0x10", "jb 0x10", "jae 0x10", "jbe 0x10", "ja 0x10",
	"push r9", "pop r10",
	"ld8 r1, [r2]", "ld16 r1, [r2+4]", "ld32 r1, [r2-4]", "ld64 r1, [0x2000]",
	"st8 [r2], r1", "st16 [r2+4], r1", "st32 [r2-4], r1", "st64 [0x2000], r1",
	"inb r1, 0x3f8", "inw r1, 0x20", "inl r1, 0xffff", "outb 0x3f8, r1", "outw 0x20, r2", "outl 0, r3",
}

func assembleOne(t *testing.T, line string) []byte {
	t.Helper()
	p, err := Assemble("start: " + line)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return p.Image
}

// TestDisassembleRoundTrip: every form assembles, disassembles to a line
// that assembles to the same bytes, and is accepted by the interpreter's
// field checks.
func TestDisassembleRoundTrip(t *testing.T) {
	for _, line := range everyForm {
		code := assembleOne(t, line)
		text, n, err := Disassemble(code)
		if err != nil || n != len(code) {
			t.Fatalf("%s: disassembled to %q, %d bytes of %d, %v", line, text, n, len(code), err)
		}
		if again := assembleOne(t, text); string(again) != string(code) {
			t.Errorf("%s: disassembled to %q, which assembles to % x, not % x", line, text, again, code)
		}
		if w := binary.LittleEndian.Uint64(code); w&zeroMask[opcode(w)] != 0 || zeroMask[opcode(w)] == 0 {
			t.Errorf("%s: the interpreter's mask refuses % x", line, code)
		}
	}
}

func FuzzDisassemble(f *testing.F) {
	for _, line := range everyForm {
		p, _ := Assemble("start: " + line)
		f.Add(p.Image)
	}
	f.Fuzz(func(t *testing.T, code []byte) {
		text, n, err := Disassemble(code)
		if len(code) >= 8 {
			// The interpreter's fast check and validate agree on what
			// is valid (the checks left to the ops aside).
			w := binary.LittleEndian.Uint64(code)
			op := opcode(w)
			why := validate(op, uint8(w>>8), uint8(w>>16), uint8(w>>24), int32(w>>32))
			fast := opUse[op] != 0 && w&zeroMask[op] == 0
			if why == "" && !fast {
				t.Fatalf("% x: valid, but the interpreter's mask refuses it", code[:8])
			}
		}
		if err != nil {
			return
		}
		again, err := Assemble("start: " + text)
		if err != nil {
			t.Fatalf("% x disassembled to %q, which does not assemble: %v", code, text, err)
		}
		if string(again.Image) != string(code[:n]) {
			t.Fatalf("% x disassembled to %q, which assembles to % x", code[:n], text, again.Image)
		}
	})
}

func TestAssembler(t *testing.T) {
	p, err := Assemble(`
	.equ BASE, 0x100
	.equ SIZE, (1 << 4) * 3 + 2 - 1	; 49
	.org BASE
start:	li r1, data + 8
	jmp later
	.align 16
data:	.byte 1, 0xff, -1, 'a', '\n'
	.u16 0xbeef
	.u32 -2
	.quad SIZE, data
	.ascii "a;b\"c"
	.asciz "z"
	.space 3
later:	hlt
after:
`)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Symbols
	if s["start"] != 0x100 || p.Entry != 0x100 || s["data"] != 0x120 || s["SIZE"] != 49 {
		t.Fatalf("symbols %v", s)
	}
	want := "\x01\xff\xffa\n\xef\xbe\xfe\xff\xff\xff" + "1\x00\x00\x00\x00\x00\x00\x00" + "\x20\x01\x00\x00\x00\x00\x00\x00" + "a;b\"c" + "z\x00" + "\x00\x00\x00"
	if got := string(p.Image[0x120:s["later"]]); got != want {
		t.Fatalf("data\n% x, want\n% x", got, want)
	}
	if li, _, _ := Disassemble(p.Image[0x100:]); li != "li r1, 0x128" {
		t.Errorf("li of a label expression: %s", li)
	}
	if len(p.Image) != int(s["after"]) {
		t.Errorf("image of %d bytes, ends at %#x", len(p.Image), s["after"])
	}
}

func TestAssemblerErrors(t *testing.T) {
	for _, c := range []struct{ src, why string }{
		{"hlt", "no start"},
		{"start: frob r1", "unknown mnemonic"},
		{"start: add r1, r2", "takes 3 operands"},
		{"start: add r1, r16, r2", "not a register"},
		{"start: mov r1, 5", "not a register"},
		{"start: jmp nowhere", "undefined symbol"},
		{"start: hlt\nstart: hlt", "defined twice"},
		{"r3: hlt", "is a register"},
		{"start: add r1, r1, 0x80000000", "signed 32-bit"},
		{"start: ld64 r1, [r2+0x80000000]", "signed 32-bit"},
		{"start: ld64 r1, [0x80000000]", "sign-extended 32-bit"},
		{"start: jmp 0x100000000", "beyond 4 GiB"},
		{"start: inb r1, 0x10000", "above 0xffff"},
		{"start: .byte 256", "does not fit"},
		{"start: .u16 -32769", "does not fit"},
		{"start: .org 0x10\n.org 0x8", "behind"},
		{"start: .align 3", "power of two"},
		{"start: .org later\nlater:", "defined above"},
		{"start: .equ X", "name and a value"},
		{"start: .ascii nope", "ascii"},
		{"start: li r1, (1", "unbalanced"},
		{"start: li r1, (1 2)", "missing )"},
		{"start: li r1, 1/0", "division by zero"},
		{"start: li r1, 1 +", "missing operand"},
		{"start: li r1, 08x", "bad number"},
		{"start: li r1, [r2", "unbalanced"},
		{"start: ld8 r1, r2", "not a memory operand"},
		{"start: .space 0x10000000", "passes"},
	} {
		_, err := Assemble(c.src)
		if err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%q: %v; want an error about %q", c.src, err, c.why)
		}
	}
}
