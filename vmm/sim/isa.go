package sim

import (
	"encoding/binary"
	"fmt"
)

// The instruction set. Every instruction is one 8-byte little-endian word,
//
//	byte 0: op   byte 1: a   byte 2: b   byte 3: c   bytes 4-7: imm (int32)
//
// except li, whose word is followed by an 8-byte immediate (16 bytes in
// all). Fields a and c name registers r0..r15 (or, per op, a condition or
// an access size) and must be below 16; b names a register r0..r15 or, as
// the base of a memory operand, 16 for "no base" (an absolute address).
// Fields an op does not use must be zero. Anything else faults.
//
// Register r15 is the stack pointer (sp). Only cmp sets the flags; ALU
// operations leave them alone. Immediates are sign-extended, except jump
// and call targets and port numbers, which are unsigned.
const (
	opInvalid opcode = 0x00 // zeroed memory faults when executed
	opNop     opcode = 0x01
	opHlt     opcode = 0x02 // pc += 8, wait for an interrupt (ExitHalt)
	opSti     opcode = 0x03 // IF = 1; interrupts stay blocked for one more instruction
	opCli     opcode = 0x04 // IF = 0
	opIret    opcode = 0x05 // pop pc, pop flags
	opRet     opcode = 0x06 // pop pc
	opLi      opcode = 0x07 // r[a] = imm64 (the next 8 bytes)
	opMov     opcode = 0x08 // r[a] = r[b]
	opCall    opcode = 0x09 // push pc+8; pc = uint32(imm)
	opCallR   opcode = 0x0a // push pc+8; pc = r[b]
	opJmp     opcode = 0x0b // pc = uint32(imm)
	opJmpR    opcode = 0x0c // pc = r[b]
	opJcc     opcode = 0x0d // if condition a holds: pc = uint32(imm)
	opPush    opcode = 0x0e // sp -= 8; [sp] = r[b]
	opPop     opcode = 0x0f // r[a] = [sp]; sp += 8
	opCmp     opcode = 0x10 // flags from r[b] - r[c]
	opCmpI    opcode = 0x11 // flags from r[b] - imm
	opIn      opcode = 0x12 // r[a] = port uint16(imm), c bytes (1, 2, 4): ExitPIORead
	opOut     opcode = 0x13 // port uint16(imm) = low c bytes of r[b]: ExitPIOWrite

	// ALU, register form: r[a] = r[b] op r[c]. The immediate form is the
	// same op plus opALUImm: r[a] = r[b] op imm.
	opAdd  opcode = 0x20
	opSub  opcode = 0x21
	opAnd  opcode = 0x22
	opOr   opcode = 0x23
	opXor  opcode = 0x24
	opShl  opcode = 0x25 // shift counts are taken mod 64
	opShr  opcode = 0x26
	opSar  opcode = 0x27
	opMul  opcode = 0x28 // low 64 bits
	opDivu opcode = 0x29 // division by zero faults
	opRemu opcode = 0x2a

	opALUImm opcode = 0x10 // added to an ALU op: the immediate form

	// Loads r[a] = zero-extended [r[b]+imm] and stores [r[b]+imm] = r[a] of
	// 1, 2, 4 or 8 bytes (the op's low two bits are log2 of the size). An
	// access entirely at or above the end of RAM is MMIO; one straddling
	// the end faults.
	opLd8  opcode = 0x40
	opLd16 opcode = 0x41
	opLd32 opcode = 0x42
	opLd64 opcode = 0x43
	opSt8  opcode = 0x48
	opSt16 opcode = 0x49
	opSt32 opcode = 0x4a
	opSt64 opcode = 0x4b
)

// opcode is an instruction's operation code, its first byte.
type opcode uint8

// InsnSize is the size of every instruction but li; LiSize is li's.
const (
	InsnSize = 8
	LiSize   = 16
)

// regNone is the b field of a memory operand without a base register.
const regNone = 16

// Flags bits, at RFLAGS's positions.
const (
	FlagCF = 1 << 0
	FlagZF = 1 << 6
	FlagSF = 1 << 7
	FlagIF = 1 << 9
	FlagOF = 1 << 11

	flagsKnown = FlagCF | FlagZF | FlagSF | FlagIF | FlagOF
)

// Conditions of jcc (field a), named as x86 names them: signed l/g,
// unsigned b/a.
const (
	condE = iota
	condNE
	condL
	condGE
	condLE
	condG
	condB
	condAE
	condBE
	condA
	numConds
)

var condNames = [numConds]string{"je", "jne", "jl", "jge", "jle", "jg", "jb", "jae", "jbe", "ja"}

// cmpFlags returns flags with CF, ZF, SF and OF set as x - y sets them.
func cmpFlags(flags, x, y uint64) uint64 {
	d := x - y
	flags &^= FlagCF | FlagZF | FlagSF | FlagOF
	if d == 0 {
		flags |= FlagZF
	}
	if int64(d) < 0 {
		flags |= FlagSF
	}
	if x < y {
		flags |= FlagCF
	}
	if ((x^y)&(x^d))>>63 != 0 {
		flags |= FlagOF
	}
	return flags
}

// condHolds reports whether condition c holds under flags. c < numConds.
func condHolds(c uint8, flags uint64) bool {
	zf := flags&FlagZF != 0
	cf := flags&FlagCF != 0
	lt := (flags&FlagSF != 0) != (flags&FlagOF != 0)
	switch c {
	case condE:
		return zf
	case condNE:
		return !zf
	case condL:
		return lt
	case condGE:
		return !lt
	case condLE:
		return zf || lt
	case condG:
		return !zf && !lt
	case condB:
		return cf
	case condAE:
		return !cf
	case condBE:
		return cf || zf
	default: // condA
		return !cf && !zf
	}
}

// alu computes the ALU op (register form) on x and y; ok is false for a
// division by zero.
func alu(op opcode, x, y uint64) (v uint64, ok bool) {
	switch op {
	case opAdd:
		return x + y, true
	case opSub:
		return x - y, true
	case opAnd:
		return x & y, true
	case opOr:
		return x | y, true
	case opXor:
		return x ^ y, true
	case opShl:
		return x << (y & 63), true
	case opShr:
		return x >> (y & 63), true
	case opSar:
		return uint64(int64(x) >> (y & 63)), true
	case opMul:
		return x * y, true
	case opDivu:
		if y == 0 {
			return 0, false
		}
		return x / y, true
	default: // opRemu
		if y == 0 {
			return 0, false
		}
		return x % y, true
	}
}

var aluNames = [...]string{"add", "sub", "and", "or", "xor", "shl", "shr", "sar", "mul", "divu", "remu"}

// word packs one 8-byte instruction.
func word(op opcode, a, b, c uint8, imm int32) uint64 {
	return uint64(op) | uint64(a)<<8 | uint64(b)<<16 | uint64(c)<<24 | uint64(uint32(imm))<<32
}

// Disassemble decodes the instruction at the start of code and returns its
// text and size. An invalid encoding is an error naming the reason.
func Disassemble(code []byte) (string, int, error) {
	if len(code) < InsnSize {
		return "", 0, fmt.Errorf("%d bytes: an instruction is %d", len(code), InsnSize)
	}
	w := binary.LittleEndian.Uint64(code)
	op, a, b, c, imm := opcode(w), uint8(w>>8), uint8(w>>16), uint8(w>>24), int32(w>>32)
	if why := validate(op, a, b, c, imm); why != "" {
		return "", 0, fmt.Errorf("%#016x: %s", w, why)
	}
	target := uint32(imm)
	switch {
	case op == opLi:
		if len(code) < LiSize {
			return "", 0, fmt.Errorf("li: immediate cut off")
		}
		return fmt.Sprintf("li r%d, %#x", a, binary.LittleEndian.Uint64(code[8:])), LiSize, nil
	case op >= opAdd && op <= opRemu:
		return fmt.Sprintf("%s r%d, r%d, r%d", aluNames[op-opAdd], a, b, c), InsnSize, nil
	case op >= opAdd+opALUImm && op <= opRemu+opALUImm:
		return fmt.Sprintf("%s r%d, r%d, %d", aluNames[op-opAdd-opALUImm], a, b, imm), InsnSize, nil
	case op >= opLd8 && op <= opLd64:
		return fmt.Sprintf("ld%d r%d, %s", 8<<(op-opLd8), a, memOperand(b, imm)), InsnSize, nil
	case op >= opSt8 && op <= opSt64:
		return fmt.Sprintf("st%d %s, r%d", 8<<(op-opSt8), memOperand(b, imm), a), InsnSize, nil
	}
	var s string
	switch op {
	case opNop, opHlt, opSti, opCli, opIret, opRet:
		s = [...]string{opNop: "nop", opHlt: "hlt", opSti: "sti", opCli: "cli", opIret: "iret", opRet: "ret"}[op]
	case opMov:
		s = fmt.Sprintf("mov r%d, r%d", a, b)
	case opCall:
		s = fmt.Sprintf("call %#x", target)
	case opCallR:
		s = fmt.Sprintf("call r%d", b)
	case opJmp:
		s = fmt.Sprintf("jmp %#x", target)
	case opJmpR:
		s = fmt.Sprintf("jmp r%d", b)
	case opJcc:
		s = fmt.Sprintf("%s %#x", condNames[a], target)
	case opPush:
		s = fmt.Sprintf("push r%d", b)
	case opPop:
		s = fmt.Sprintf("pop r%d", a)
	case opCmp:
		s = fmt.Sprintf("cmp r%d, r%d", b, c)
	case opCmpI:
		s = fmt.Sprintf("cmp r%d, %d", b, imm)
	case opIn:
		s = fmt.Sprintf("in%s r%d, %#x", sizeSuffix(c), a, uint16(imm))
	case opOut:
		s = fmt.Sprintf("out%s %#x, r%d", sizeSuffix(c), uint16(imm), b)
	}
	return s, InsnSize, nil
}

func memOperand(b uint8, imm int32) string {
	switch {
	case b == regNone:
		return fmt.Sprintf("[%#x]", uint64(int64(imm)))
	case imm == 0:
		return fmt.Sprintf("[r%d]", b)
	case imm < 0:
		return fmt.Sprintf("[r%d-%d]", b, -int64(imm))
	}
	return fmt.Sprintf("[r%d+%d]", b, imm)
}

func sizeSuffix(size uint8) string {
	switch size {
	case 1:
		return "b"
	case 2:
		return "w"
	}
	return "l"
}

// Field usage per op, for validate: which of a, b, c, imm an op reads.
const (
	useA = 1 << iota
	useB
	useC
	useImm
	useBase // b is a register or regNone
)

// opUse is the field usage of every valid op; zero marks an invalid op.
var opUse = func() (t [256]uint8) {
	const none = 0x80 // valid, no fields
	for _, op := range []opcode{opNop, opHlt, opSti, opCli, opIret, opRet} {
		t[op] = none
	}
	t[opLi] = useA
	t[opMov] = useA | useB
	t[opCall], t[opJmp] = useImm, useImm
	t[opCallR], t[opJmpR], t[opPush] = useB, useB, useB
	t[opJcc] = useA | useImm
	t[opPop] = useA
	t[opCmp] = useB | useC
	t[opCmpI] = useB | useImm
	t[opIn] = useA | useC | useImm
	t[opOut] = useB | useC | useImm
	for op := opAdd; op <= opRemu; op++ {
		t[op] = useA | useB | useC
		t[op+opALUImm] = useA | useB | useImm
	}
	for i := opcode(0); i < 4; i++ {
		t[opLd8+i] = useA | useBase | useImm
		t[opSt8+i] = useA | useBase | useImm
	}
	return t
}()

// zeroMask has, for every valid op, the bits of an instruction word that
// must be zero: unused fields, the high nibble of register fields (the base
// field of loads and stores may hold regNone, checked apart), the high half
// of port numbers. The interpreter's fast path tests a word against it and
// leaves the remaining checks (condition, access size, base above regNone)
// to the ops concerned.
var zeroMask = func() (t [256]uint64) {
	for op := range t {
		use := opUse[op]
		if use == 0 {
			continue // the interpreter faults on the op itself
		}
		var m uint64
		switch {
		case use&useA == 0:
			m |= 0xff << 8
		default:
			m |= 0xf0 << 8
		}
		switch {
		case use&(useB|useBase) == 0:
			m |= 0xff << 16
		case use&useB != 0:
			m |= 0xf0 << 16
		default:
			m |= 0xe0 << 16
		}
		switch {
		case use&useC == 0:
			m |= 0xff << 24
		default:
			m |= 0xf0 << 24
		}
		switch {
		case use&useImm == 0:
			m |= 0xffffffff << 32
		case opcode(op) == opIn || opcode(op) == opOut:
			m |= 0xffff0000 << 32
		}
		t[op] = m
	}
	return t
}()

// validate returns why the fields are not a valid instruction, or "". The
// interpreter calls it only to explain a fault (see zeroMask).
func validate(op opcode, a, b, c uint8, imm int32) string {
	use := opUse[op]
	switch {
	case use == 0:
		return fmt.Sprintf("invalid opcode %#02x", uint8(op))
	case use&useA == 0 && a != 0, use&(useB|useBase) == 0 && b != 0,
		use&useC == 0 && c != 0, use&useImm == 0 && imm != 0:
		return "unused field not zero"
	case a > 15 && op != opJcc, c > 15:
		return "register field above r15"
	case op == opJcc && a >= numConds:
		return fmt.Sprintf("condition %d", a)
	case b > regNone, b == regNone && use&useBase == 0:
		return "register field above r15"
	case (op == opIn || op == opOut) && c != 1 && c != 2 && c != 4:
		return fmt.Sprintf("port access size %d", c)
	case (op == opIn || op == opOut) && uint32(imm) > 0xffff:
		return fmt.Sprintf("port %#x", uint32(imm))
	}
	return ""
}
