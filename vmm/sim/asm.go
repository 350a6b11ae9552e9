package sim

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Program is an assembled guest: an image loaded at guest-physical 0, the
// address execution starts at (the symbol "start") and every symbol.
type Program struct {
	Image   []byte
	Entry   uint64
	Symbols map[string]uint64
}

// Assemble assembles src, a program in this package's assembly language:
//
//	; a comment runs to the end of the line
//	.equ NAME, expr      ; a constant
//	.org expr            ; continue at this address (never backwards)
//	.align expr          ; pad with zeros to a multiple
//	.space expr          ; that many zero bytes
//	.byte e, ...         ; also .u16, .u32, .quad (8 bytes)
//	.ascii "text"        ; .asciz adds a NUL; escapes as in Go
//	label:  mnemonic operands
//
// Operands are registers (r0..r15, sp = r15), expressions, and memory
// operands [rN], [rN+expr], [rN-expr] or [expr]. Expressions combine
// numbers (decimal, 0x hex, 0b binary, 'c'), symbols and ( ) with
// * / % << >> & | ^ + - ~ at C's precedence; they compute in uint64. The
// mnemonics are those of Disassemble, plus an immediate form of every ALU op
// and of cmp chosen by the last operand (add r1, r2, 5), and jmp/call to a
// register. The directives .org, .align, .space and .equ take only symbols
// defined above them. The program must define "start".
func Assemble(src string) (*Program, error) {
	a := &assembler{syms: map[string]uint64{}}
	lines := strings.Split(src, "\n")
	for i, line := range lines {
		if err := a.pass1(line, i+1); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
	}
	a.image = make([]byte, a.pc)
	for _, s := range a.stmts {
		if err := a.pass2(s); err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", s.line, strings.TrimSpace(s.text), err)
		}
	}
	entry, ok := a.syms["start"]
	if !ok {
		return nil, fmt.Errorf("no start symbol")
	}
	return &Program{Image: a.image, Entry: entry, Symbols: a.syms}, nil
}

type assembler struct {
	syms  map[string]uint64
	pc    uint64
	stmts []stmt
	image []byte
}

// stmt is one statement placed by pass 1 and encoded by pass 2.
type stmt struct {
	line int
	text string // for errors
	addr uint64
	op   string // mnemonic or directive; "" for nothing
	args []string
}

// maxImage bounds a program, so a stray .org cannot allocate gigabytes.
const maxImage = 64 << 20

func (a *assembler) pass1(line string, n int) error {
	text := stripComment(line)
	rest := strings.TrimSpace(text)
	// Labels.
	for {
		i := strings.IndexByte(rest, ':')
		if i < 0 || !isIdent(strings.TrimSpace(rest[:i])) {
			break
		}
		if err := a.define(strings.TrimSpace(rest[:i]), a.pc); err != nil {
			return err
		}
		rest = strings.TrimSpace(rest[i+1:])
	}
	s := stmt{line: n, text: text, addr: a.pc}
	if rest != "" {
		op, args, _ := strings.Cut(rest, " ")
		s.op = strings.ToLower(op)
		var err error
		if s.args, err = splitArgs(args); err != nil {
			return err
		}
	}
	a.stmts = append(a.stmts, s)
	size, err := a.size(s)
	if err != nil {
		return err
	}
	if a.pc+size > maxImage || a.pc+size < a.pc {
		return fmt.Errorf("the program passes %d bytes", maxImage)
	}
	a.pc += size
	return nil
}

func (a *assembler) define(name string, v uint64) error {
	if _, ok := a.syms[name]; ok {
		return fmt.Errorf("%s defined twice", name)
	}
	if _, isReg := parseReg(name); isReg {
		return fmt.Errorf("%s is a register", name)
	}
	a.syms[name] = v
	return nil
}

// size returns how many bytes s occupies, evaluating the directives that
// move the location counter.
func (a *assembler) size(s stmt) (uint64, error) {
	n := uint64(len(s.args))
	switch s.op {
	case "":
		return 0, nil
	case ".equ":
		if len(s.args) != 2 || !isIdent(s.args[0]) {
			return 0, fmt.Errorf(".equ takes a name and a value")
		}
		v, err := evalNow(s.args[1], a.syms)
		if err != nil {
			return 0, err
		}
		return 0, a.define(s.args[0], v)
	case ".org", ".align", ".space":
		if len(s.args) != 1 {
			return 0, fmt.Errorf("%s takes one value", s.op)
		}
		v, err := evalNow(s.args[0], a.syms)
		if err != nil {
			return 0, err
		}
		switch {
		case s.op == ".space":
			return v, nil
		case s.op == ".org" && v < a.pc:
			return 0, fmt.Errorf(".org %#x is behind %#x", v, a.pc)
		case s.op == ".org":
			return v - a.pc, nil
		case v == 0 || v&(v-1) != 0 || v > maxImage:
			return 0, fmt.Errorf(".align %d: not a power of two", v)
		}
		return (v - a.pc%v) % v, nil
	case ".byte":
		return n, nil
	case ".u16":
		return 2 * n, nil
	case ".u32":
		return 4 * n, nil
	case ".quad":
		return 8 * n, nil
	case ".ascii", ".asciz":
		if len(s.args) != 1 {
			return 0, fmt.Errorf("%s takes one string", s.op)
		}
		str, err := strconv.Unquote(s.args[0])
		if err != nil {
			return 0, fmt.Errorf("%s %s: %w", s.op, s.args[0], err)
		}
		if s.op == ".asciz" {
			return uint64(len(str)) + 1, nil
		}
		return uint64(len(str)), nil
	case "li":
		return LiSize, nil
	}
	if _, ok := mnemonics[s.op]; !ok {
		return 0, fmt.Errorf("unknown mnemonic %q", s.op)
	}
	return InsnSize, nil
}

func (a *assembler) pass2(s stmt) error {
	out := a.image[s.addr:]
	switch s.op {
	case "", ".equ", ".org", ".align", ".space":
		return nil
	case ".ascii", ".asciz":
		str, _ := strconv.Unquote(s.args[0])
		copy(out, str)
		return nil
	case ".byte", ".u16", ".u32", ".quad":
		size := map[string]int{".byte": 1, ".u16": 2, ".u32": 4, ".quad": 8}[s.op]
		for i, arg := range s.args {
			v, err := eval(arg, a.syms)
			if err != nil {
				return err
			}
			if !fits(v, size) {
				return fmt.Errorf("%s %s: does not fit in %d bytes", s.op, arg, size)
			}
			var b [8]byte
			binary.LittleEndian.PutUint64(b[:], v)
			copy(out[i*size:], b[:size])
		}
		return nil
	}
	w, imm64, err := a.encode(s)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(out, w)
	if s.op == "li" {
		binary.LittleEndian.PutUint64(out[8:], imm64)
	}
	return nil
}

// fits reports whether v, unsigned or negative, fits in size bytes.
func fits(v uint64, size int) bool {
	if size == 8 || v < 1<<(8*size) {
		return true
	}
	return int64(v) < 0 && int64(v) >= -1<<(8*size-1)
}

// Instruction forms: which operands a mnemonic takes.
type form uint8

const (
	formNone  form = iota + 1 // hlt
	formLi                    // li rd, expr
	formMov                   // mov rd, rs
	formALU                   // add rd, rs, rt|expr
	formCmp                   // cmp rs, rt|expr
	formJump                  // jmp expr|rs (also call)
	formJcc                   // je expr
	formPush                  // push rs
	formPop                   // pop rd
	formLoad                  // ld64 rd, [mem]
	formStore                 // st64 [mem], rs
	formIn                    // inl rd, port
	formOut                   // outl port, rs
)

type mnemonic struct {
	form form
	op   opcode
	arg  uint8 // condition (jcc) or access size (in, out)
}

var mnemonics = func() map[string]mnemonic {
	m := map[string]mnemonic{
		"nop": {formNone, opNop, 0}, "hlt": {formNone, opHlt, 0}, "sti": {formNone, opSti, 0},
		"cli": {formNone, opCli, 0}, "iret": {formNone, opIret, 0}, "ret": {formNone, opRet, 0},
		"li": {formLi, opLi, 0}, "mov": {formMov, opMov, 0}, "cmp": {formCmp, opCmp, 0},
		"jmp": {formJump, opJmp, 0}, "call": {formJump, opCall, 0},
		"push": {formPush, opPush, 0}, "pop": {formPop, opPop, 0},
		"inb": {formIn, opIn, 1}, "inw": {formIn, opIn, 2}, "inl": {formIn, opIn, 4},
		"outb": {formOut, opOut, 1}, "outw": {formOut, opOut, 2}, "outl": {formOut, opOut, 4},
	}
	for i, name := range aluNames {
		m[name] = mnemonic{formALU, opAdd + opcode(i), 0}
	}
	for c, name := range condNames {
		m[name] = mnemonic{formJcc, opJcc, uint8(c)}
	}
	for i := range 4 {
		m[fmt.Sprintf("ld%d", 8<<i)] = mnemonic{formLoad, opLd8 + opcode(i), 0}
		m[fmt.Sprintf("st%d", 8<<i)] = mnemonic{formStore, opSt8 + opcode(i), 0}
	}
	return m
}()

// encode assembles one instruction: its word, and li's immediate.
func (a *assembler) encode(s stmt) (uint64, uint64, error) {
	mn := mnemonics[s.op]
	want := map[form]int{formNone: 0, formLi: 2, formMov: 2, formALU: 3, formCmp: 2, formJump: 1,
		formJcc: 1, formPush: 1, formPop: 1, formLoad: 2, formStore: 2, formIn: 2, formOut: 2}[mn.form]
	if len(s.args) != want {
		return 0, 0, fmt.Errorf("%s takes %d operands, not %d", s.op, want, len(s.args))
	}
	reg := func(i int) (uint8, error) {
		r, ok := parseReg(s.args[i])
		if !ok {
			return 0, fmt.Errorf("operand %d: %q is not a register", i+1, s.args[i])
		}
		return r, nil
	}
	// regOrImm parses operand i as a register or, failing that, as a
	// signed 32-bit immediate.
	regOrImm := func(i int) (r uint8, imm int32, isReg bool, err error) {
		if r, ok := parseReg(s.args[i]); ok {
			return r, 0, true, nil
		}
		imm, err = a.imm32(s.args[i])
		return 0, imm, false, err
	}
	var rd, rs uint8
	var err error
	switch mn.form {
	case formNone:
		return word(mn.op, 0, 0, 0, 0), 0, nil
	case formLi:
		if rd, err = reg(0); err != nil {
			return 0, 0, err
		}
		v, err := eval(s.args[1], a.syms)
		return word(opLi, rd, 0, 0, 0), v, err
	case formMov:
		if rd, err = reg(0); err == nil {
			rs, err = reg(1)
		}
		return word(opMov, rd, rs, 0, 0), 0, err
	case formALU:
		if rd, err = reg(0); err == nil {
			rs, err = reg(1)
		}
		if err != nil {
			return 0, 0, err
		}
		rt, imm, isReg, err := regOrImm(2)
		if isReg {
			return word(mn.op, rd, rs, rt, 0), 0, nil
		}
		return word(mn.op+opALUImm, rd, rs, 0, imm), 0, err
	case formCmp:
		if rs, err = reg(0); err != nil {
			return 0, 0, err
		}
		rt, imm, isReg, err := regOrImm(1)
		if isReg {
			return word(opCmp, 0, rs, rt, 0), 0, nil
		}
		return word(opCmpI, 0, rs, 0, imm), 0, err
	case formJump:
		if r, ok := parseReg(s.args[0]); ok {
			return word(mn.op+1, 0, r, 0, 0), 0, nil // jmpr, callr
		}
		t, err := a.target(s.args[0])
		return word(mn.op, 0, 0, 0, t), 0, err
	case formJcc:
		t, err := a.target(s.args[0])
		return word(opJcc, mn.arg, 0, 0, t), 0, err
	case formPush:
		rs, err = reg(0)
		return word(opPush, 0, rs, 0, 0), 0, err
	case formPop:
		rd, err = reg(0)
		return word(opPop, rd, 0, 0, 0), 0, err
	case formLoad, formStore:
		ri, mi := 0, 1
		if mn.form == formStore {
			ri, mi = 1, 0
		}
		if rd, err = reg(ri); err != nil {
			return 0, 0, err
		}
		base, disp, err := a.memory(s.args[mi])
		return word(mn.op, rd, base, 0, disp), 0, err
	case formIn:
		if rd, err = reg(0); err != nil {
			return 0, 0, err
		}
		port, err := a.port(s.args[1])
		return word(opIn, rd, 0, mn.arg, port), 0, err
	default: // formOut
		if rs, err = reg(1); err != nil {
			return 0, 0, err
		}
		port, err := a.port(s.args[0])
		return word(opOut, 0, rs, mn.arg, port), 0, err
	}
}

func (a *assembler) imm32(arg string) (int32, error) {
	v, err := eval(arg, a.syms)
	if err != nil {
		return 0, err
	}
	if int64(v) < -1<<31 || int64(v) >= 1<<31 {
		return 0, fmt.Errorf("%s = %#x: not a signed 32-bit immediate", arg, v)
	}
	return int32(v), nil
}

func (a *assembler) target(arg string) (int32, error) {
	v, err := eval(arg, a.syms)
	if err != nil {
		return 0, err
	}
	if v > 0xffffffff {
		return 0, fmt.Errorf("target %s = %#x: beyond 4 GiB", arg, v)
	}
	return int32(uint32(v)), nil
}

func (a *assembler) port(arg string) (int32, error) {
	v, err := eval(arg, a.syms)
	if err != nil {
		return 0, err
	}
	if v > 0xffff {
		return 0, fmt.Errorf("port %s = %#x: above 0xffff", arg, v)
	}
	return int32(v), nil
}

// memory parses [rN], [rN+expr], [rN-expr] or [expr].
func (a *assembler) memory(arg string) (uint8, int32, error) {
	if len(arg) < 2 || arg[0] != '[' || arg[len(arg)-1] != ']' {
		return 0, 0, fmt.Errorf("%q is not a memory operand", arg)
	}
	in := strings.TrimSpace(arg[1 : len(arg)-1])
	end := strings.IndexAny(in, "+-")
	if end < 0 {
		end = len(in)
	}
	if r, ok := parseReg(strings.TrimSpace(in[:end])); ok {
		if end == len(in) {
			return r, 0, nil
		}
		disp, err := a.imm32(in[end:]) // the sign is the expression's
		return r, disp, err
	}
	v, err := eval(in, a.syms)
	if err == nil && (int64(v) < -1<<31 || int64(v) >= 1<<31) {
		err = fmt.Errorf("absolute address %s = %#x: not a sign-extended 32-bit one (load it into a register)", in, v)
	}
	return regNone, int32(v), err
}

// parseReg parses r0..r15 or sp.
func parseReg(s string) (uint8, bool) {
	s = strings.ToLower(s)
	if s == "sp" {
		return 15, true
	}
	if len(s) < 2 || s[0] != 'r' || (len(s) > 2 && s[1] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s[1:], 10, 8)
	if err != nil || n > 15 {
		return 0, false
	}
	return uint8(n), true
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// stripComment cuts line at a ';' outside quotes.
func stripComment(line string) string {
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0 && c == '\\':
			i++
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
		case c == '"' || c == '\'':
			quote = c
		case c == ';':
			return line[:i]
		}
	}
	return line
}

// splitArgs splits operands at commas outside quotes and brackets.
func splitArgs(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var args []string
	var quote byte
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == '\\':
			i++
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
		case c == '"' || c == '\'':
			quote = c
		case c == '[' || c == '(':
			depth++
		case c == ']' || c == ')':
			depth--
		case c == ',' && depth == 0:
			args = append(args, strings.TrimSpace(s[start:i]))
			start = i + 1
		}
	}
	if quote != 0 || depth != 0 {
		return nil, fmt.Errorf("unbalanced quotes or brackets in %q", s)
	}
	args = append(args, strings.TrimSpace(s[start:]))
	for _, a := range args {
		if a == "" {
			return nil, fmt.Errorf("empty operand in %q", s)
		}
	}
	return args, nil
}
