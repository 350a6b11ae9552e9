package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// noBreakpoint is a pc no instruction can have (it cannot be fetched).
const noBreakpoint = math.MaxUint64

// run executes the guest from pc until a stop. At every instruction
// boundary, before the instruction, it checks in this order:
//
//  1. an open interrupt window (WindowReq, IF set, no sti shadow):
//     ExitWindow, synchronous, so it comes first;
//  2. Kick: ExitKicked;
//  3. pc == bp: ExitBreakpoint, unless this run resumes from a
//     breakpoint at this pc and has not executed an instruction yet.
//
// Exits name the pc of the boundary, except ExitHalt (the pc after hlt)
// and accesses (the pc of the accessing instruction, which Complete
// finishes).
func (m *Machine) run(bp uint64) (machine.Exit, error) {
	c := &m.cpu
	switch {
	case c.Off:
		return machine.Exit{}, fmt.Errorf("run: %w (status %d)", machine.ErrPowerOff, c.OffStatus)
	case c.Halted:
		return machine.Exit{}, errors.New("run: the guest is halted: inject an interrupt first")
	case c.Pend.Kind != 0:
		return machine.Exit{}, fmt.Errorf("run: the access of %v is not completed", c.Pend.exit(c.PC))
	}
	skip := m.resumeSet && m.resume == c.PC
	m.resumeSet = false

	mem := m.mem
	size := uint64(len(mem))
	r := &c.R
	pc := c.PC
	var n uint64 // instructions executed by this run
	for {
		if c.WindowReq && c.Flags&FlagIF != 0 && !c.Shadow {
			c.WindowReq = false
			return m.stop(pc, n, machine.Exit{Kind: machine.ExitWindow, RIP: pc})
		}
		if m.kick.Load() && m.kick.Swap(false) {
			return m.stop(pc, n, machine.Exit{Kind: machine.ExitKicked, RIP: pc})
		}
		if pc == bp && !skip {
			m.resume, m.resumeSet = pc, true
			return m.stop(pc, n, machine.Exit{Kind: machine.ExitBreakpoint, RIP: pc})
		}
		skip = false
		c.Shadow = false

		if pc > size-InsnSize {
			return m.fault(pc, n, "fetch outside RAM")
		}
		w := binary.LittleEndian.Uint64(mem[pc:])
		op := opcode(w)
		if w&zeroMask[op] != 0 {
			return m.fault(pc, n, "%#016x: %s", w, validate(op, uint8(w>>8), uint8(w>>16), uint8(w>>24), int32(w>>32)))
		}
		a, b, cc := w>>8&0xff, w>>16&0xff, w>>24&0xff
		imm := uint64(int64(int32(w >> 32)))
		next := pc + InsnSize

		switch op {
		case opNop:
		case opLi:
			if pc > size-LiSize {
				return m.fault(pc, n, "li: immediate outside RAM")
			}
			r[a] = binary.LittleEndian.Uint64(mem[pc+8:])
			next = pc + LiSize
		case opMov:
			r[a] = r[b]
		case opAdd + opALUImm:
			r[a] = r[b] + imm
		case opSub + opALUImm:
			r[a] = r[b] - imm
		case opAnd + opALUImm:
			r[a] = r[b] & imm
		case opShl + opALUImm:
			r[a] = r[b] << (imm & 63)
		case opShr + opALUImm:
			r[a] = r[b] >> (imm & 63)
		case opAdd:
			r[a] = r[b] + r[cc]
		case opSub:
			r[a] = r[b] - r[cc]
		case opAnd, opOr, opXor, opShl, opShr, opSar, opMul, opDivu, opRemu:
			v, ok := alu(op, r[b], r[cc])
			if !ok {
				return m.fault(pc, n, "division by zero")
			}
			r[a] = v
		case opOr + opALUImm, opXor + opALUImm, opSar + opALUImm, opMul + opALUImm,
			opDivu + opALUImm, opRemu + opALUImm:
			v, ok := alu(op-opALUImm, r[b], imm)
			if !ok {
				return m.fault(pc, n, "division by zero")
			}
			r[a] = v
		case opCmp:
			c.Flags = cmpFlags(c.Flags, r[b], r[cc])
		case opCmpI:
			c.Flags = cmpFlags(c.Flags, r[b], imm)
		case opJmp:
			next = uint64(uint32(imm))
		case opJmpR:
			next = r[b]
		case opJcc:
			if a >= numConds {
				return m.fault(pc, n, "%#016x: %s", w, validate(op, uint8(a), 0, 0, int32(imm)))
			}
			if condHolds(uint8(a), c.Flags) {
				next = uint64(uint32(imm))
			}
		case opCall, opCallR, opPush:
			sp := r[15] - 8
			if sp > size-8 {
				return m.fault(pc, n, "push: stack pointer %#x outside RAM", r[15])
			}
			v := next
			switch op {
			case opCall:
				next = uint64(uint32(imm))
			case opCallR:
				next = r[b]
			default:
				v = r[b]
			}
			binary.LittleEndian.PutUint64(mem[sp:], v)
			m.markWrite(sp, 8)
			r[15] = sp
		case opRet, opPop:
			sp := r[15]
			if sp > size-8 {
				return m.fault(pc, n, "pop: stack pointer %#x outside RAM", sp)
			}
			v := binary.LittleEndian.Uint64(mem[sp:])
			r[15] = sp + 8
			if op == opRet {
				next = v
			} else {
				r[a] = v
			}
		case opLd8, opLd16, opLd32, opLd64, opSt8, opSt16, opSt32, opSt64:
			if b > regNone {
				return m.fault(pc, n, "%#016x: %s", w, validate(op, uint8(a), uint8(b), 0, int32(imm)))
			}
			addr := r[b] + imm
			sz := uint64(1) << (op & 3)
			store := op >= opSt8
			if addr > size-sz {
				if addr < size {
					return m.fault(pc, n, "%d-byte access at %#x straddles the end of RAM", sz, addr)
				}
				if store {
					c.Pend = access{Kind: machine.ExitMMIOWrite, Addr: addr, Size: uint8(sz), Data: r[a] & sizeMask(uint8(sz))}
				} else {
					c.Pend = access{Kind: machine.ExitMMIORead, Addr: addr, Size: uint8(sz), Reg: uint8(a)}
				}
				return m.stop(pc, n+1, c.Pend.exit(pc))
			}
			if store {
				v := r[a]
				switch sz {
				case 1:
					mem[addr] = byte(v)
				case 2:
					binary.LittleEndian.PutUint16(mem[addr:], uint16(v))
				case 4:
					binary.LittleEndian.PutUint32(mem[addr:], uint32(v))
				default:
					binary.LittleEndian.PutUint64(mem[addr:], v)
				}
				m.markWrite(addr, sz)
			} else {
				switch sz {
				case 1:
					r[a] = uint64(mem[addr])
				case 2:
					r[a] = uint64(binary.LittleEndian.Uint16(mem[addr:]))
				case 4:
					r[a] = uint64(binary.LittleEndian.Uint32(mem[addr:]))
				default:
					r[a] = binary.LittleEndian.Uint64(mem[addr:])
				}
			}
		case opIn, opOut:
			if cc != 1 && cc != 2 && cc != 4 {
				return m.fault(pc, n, "%#016x: %s", w, validate(op, uint8(a), uint8(b), uint8(cc), int32(imm)))
			}
			port := imm & 0xffff
			if op == opIn {
				c.Pend = access{Kind: machine.ExitPIORead, Addr: port, Size: uint8(cc), Reg: uint8(a)}
			} else {
				c.Pend = access{Kind: machine.ExitPIOWrite, Addr: port, Size: uint8(cc), Data: r[b] & sizeMask(uint8(cc))}
			}
			return m.stop(pc, n+1, c.Pend.exit(pc))
		case opHlt:
			pc = next
			c.Halted = true
			return m.stop(pc, n+1, machine.Exit{Kind: machine.ExitHalt, RIP: pc})
		case opSti:
			if c.Flags&FlagIF == 0 {
				c.Shadow = true
			}
			c.Flags |= FlagIF
		case opCli:
			c.Flags &^= FlagIF
		case opIret:
			sp := r[15]
			if sp > size-16 {
				return m.fault(pc, n, "iret: stack pointer %#x outside RAM", sp)
			}
			next = binary.LittleEndian.Uint64(mem[sp:])
			c.Flags = binary.LittleEndian.Uint64(mem[sp+8:]) & flagsKnown
			r[15] = sp + 16
		default:
			return m.fault(pc, n, "%#016x: %s", w, validate(op, uint8(a), uint8(b), uint8(cc), int32(imm)))
		}
		pc = next
		n++
	}
}

// stop ends a run at pc after n instructions with e.
func (m *Machine) stop(pc, n uint64, e machine.Exit) (machine.Exit, error) {
	m.cpu.PC = pc
	m.instructions.Add(n)
	return e, nil
}

// fault ends a run at the faulting instruction at pc after n instructions.
func (m *Machine) fault(pc, n uint64, format string, args ...any) (machine.Exit, error) {
	m.cpu.PC = pc
	m.instructions.Add(n)
	return machine.Exit{}, &Fault{RIP: pc, Reason: fmt.Sprintf(format, args...)}
}
