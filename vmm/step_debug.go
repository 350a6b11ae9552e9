package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// Debug says how Enter runs the guest. The zero value runs it freely.
//
// As measured on kvm-pvm, a hardware breakpoint stops the guest at the
// right RIP but setting RFLAGS.RF to resume past it is ignored (it fires
// again at once), so to execute the instruction at a breakpoint its owner
// enters once with SingleStep and the breakpoint off, then re-arms it. The
// two cannot be combined. Some KVMs ignore hardware breakpoints altogether
// (QEMU's TCG emulating AMD-V): Enter refuses Break there (see
// HardwareBreakpoints) and its owner lands by single steps.
type Debug struct {
	// Break stops the guest (StepDebug with AtBreak) whenever it is about
	// to execute the instruction at BreakRIP, at once if it is there.
	Break    bool
	BreakRIP uint64
	// SingleStep stops it (StepDebug with Stepped) after one instruction,
	// or earlier at an exit the instruction causes. The first step after
	// Complete is the access itself: it applies it and stops. A HLT, or
	// STI then HLT, is run rather than stepped, and ends as StepHalt, as it
	// does running: under the trap flag KVMs differ (kvm-pvm reports a debug
	// exit and keeps the halt pending, to report KVM_EXIT_HLT after some
	// later instruction; upstream KVM reports KVM_EXIT_HLT). The first step
	// after Inject delivers the interrupt, stopping at the handler's first
	// instruction: the trap flag a single step sets would otherwise be
	// pushed with RFLAGS into the guest's interrupt frame (and the handler
	// run unstepped). Other instructions that save RFLAGS (PUSHF, INT n, an
	// exception) leak it the same way if stepped; the bundled guests execute
	// none, and such a leak shows as a divergence, never silently.
	SingleStep bool
}

// dr7Fixed1 is DR7's bit 10, reserved and always 1 (Intel SDM 17.2.4).
const dr7Fixed1 = 1 << 10

// dr7ExecBreakpoint is DR7 enabling breakpoint slot (0-3) on instruction
// execution at the linear address in DR<slot>: global enable, condition
// "execute", length 1 (the only length allowed for execution), exact
// breakpoints (GE), as QEMU's gdbstub sets them.
func dr7ExecBreakpoint(slot int) uint64 {
	if slot < 0 || slot > 3 {
		panic(fmt.Sprintf("debug register slot %d", slot))
	}
	return dr7Fixed1 | kvmapi.DR_GLOBAL_SLOWDOWN |
		kvmapi.DR_GLOBAL_ENABLE<<(slot*kvmapi.DR_ENABLE_SIZE) |
		(kvmapi.DR_RW_EXECUTE|kvmapi.DR_LEN_1)<<(kvmapi.DR_CONTROL_SHIFT+slot*kvmapi.DR_CONTROL_SIZE)
}

// guestDebug is KVM_SET_GUEST_DEBUG's control word and debug registers for
// d, whose breakpoint is at linear address lin.
func guestDebug(d Debug, lin uint64) (uint32, [8]uint64) {
	var regs [8]uint64
	switch {
	case d.Break:
		regs[0], regs[7] = lin, dr7ExecBreakpoint(0)
		return kvmapi.KVM_GUESTDBG_ENABLE | kvmapi.KVM_GUESTDBG_USE_HW_BP, regs
	case d.SingleStep:
		return kvmapi.KVM_GUESTDBG_ENABLE | kvmapi.KVM_GUESTDBG_SINGLESTEP, regs
	}
	return 0, regs
}

// applyDebug puts d in effect. A single step is set again every time: KVM
// sets the trap flag only at the RIP current when it is set, and an IRET or
// POPF in the guest clears it. Precondition: on the vCPU's thread.
func (s *Stepper) applyDebug(d Debug) error {
	if d == s.debug && !d.SingleStep {
		return nil
	}
	var lin uint64
	if d.Break {
		var err error
		if lin, err = s.linear(d.BreakRIP); err != nil {
			return err
		}
	}
	ctl, regs := guestDebug(d, lin)
	if err := kvmapi.SetGuestDebug(s.v.fd, ctl, regs); err != nil {
		s.debug = Debug{SingleStep: true} // unknown: set it again next time
		return err
	}
	s.debug = d
	return nil
}

// linear converts an address in the code segment to a linear address: the
// same in 64-bit mode, CS.base plus it (32 bits) otherwise.
// Precondition: on the vCPU's thread.
func (s *Stepper) linear(addr uint64) (uint64, error) {
	sregs, err := kvm.GetSregs(uintptr(s.v.fd))
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	if sregs.EFER&eferLMA != 0 && sregs.CS.L != 0 {
		return addr, nil
	}
	return uint64(uint32(sregs.CS.Base + addr)), nil
}

// readLinear reads len(p) bytes of guest memory at linear address lin,
// through the guest's page tables (KVM_TRANSLATE, page by page).
// Precondition: on the vCPU's thread.
func (s *Stepper) readLinear(lin uint64, p []byte) error {
	for len(p) > 0 {
		gpa, err := s.physical(lin)
		if err != nil {
			return err
		}
		n := min(len(p), int(PageSize-lin%PageSize))
		if _, err := s.m.mem.ReadAt(p[:n], int64(gpa)); err != nil {
			return err
		}
		p, lin = p[n:], lin+uint64(n)
	}
	return nil
}

// codeAt returns the first two bytes of the instruction at rip.
// Precondition: on the vCPU's thread.
func (s *Stepper) codeAt(rip uint64) ([2]byte, error) {
	var code [2]byte
	lin, err := s.linear(rip)
	if err != nil {
		return code, err
	}
	err = s.readLinear(lin, code[:])
	return code, err
}

// Opcodes haltsNext looks for.
const (
	opHLT = 0xf4
	opSTI = 0xfb
)

// haltsNext reports whether the instruction that code starts is a HLT, or
// an STI followed by a HLT (which the STI's interrupt shadow makes one
// step on some KVMs and two on others): what a single step runs instead.
func haltsNext(code [2]byte) bool {
	return code[0] == opHLT || code[0] == opSTI && code[1] == opHLT
}

// deliverInjected is the first single step after Inject: it runs the guest
// until the interrupt is delivered and stops at the handler's first
// instruction without the trap flag, which the delivery would push into the
// guest's interrupt frame. Where hardware breakpoints work it arms one
// there; elsewhere it puts a HLT there for that one entry (deliverToHLT).
// A stop before the delivery (a kick, an exit of a completed access) is
// returned as it is. Precondition: on the vCPU's thread; s.injected;
// s.hwbp is known.
func (s *Stepper) deliverInjected() (StepExit, error) {
	handler, err := s.handler(s.injectedVec)
	if err != nil {
		return StepExit{}, fmt.Errorf("stepping into vector %d: %w", s.injectedVec, err)
	}
	if s.hwbp != hwbpWork {
		return s.deliverToHLT(handler)
	}
	if err := s.applyDebug(Debug{Break: true, BreakRIP: handler}); err != nil {
		return StepExit{}, err
	}
	ex, err := s.runOnce()
	if err != nil || ex.Reason != StepDebug {
		return ex, err
	}
	if !ex.AtBreak || ex.RIP != handler || s.injected {
		return StepExit{}, fmt.Errorf("delivering vector %d: stopped at %#x (DR6 %#x), not at its handler %#x", s.injectedVec, ex.RIP, ex.DR6, handler)
	}
	ex.AtBreak, ex.Stepped = false, true
	return ex, nil
}

// deliverToHLT is deliverInjected without a hardware breakpoint: the
// handler's first byte becomes a HLT for one entry, so the guest exits as
// soon as the interrupt is delivered; the byte is put back and RIP set
// back to the handler, where the guest then is as if a breakpoint had
// stopped it. The byte is written to RAM directly, not with WriteAt: it is
// restored before Enter returns, so no page changes, and marking the page
// dirty would put it in this machine's landing signatures and not in the
// primary's (modes/replay). With the userspace irqchip a HLT always exits
// to userspace and leaves the vCPU runnable. Precondition: on the vCPU's
// thread; s.injected.
func (s *Stepper) deliverToHLT(handler uint64) (StepExit, error) {
	lin, err := s.linear(handler)
	if err != nil {
		return StepExit{}, err
	}
	gpa, err := s.physical(lin)
	if err != nil {
		return StepExit{}, fmt.Errorf("stepping into vector %d: %w", s.injectedVec, err)
	}
	off, err := s.m.mem.offset(gpa, 1)
	if err != nil {
		return StepExit{}, fmt.Errorf("stepping into vector %d at %#x: %w", s.injectedVec, handler, err)
	}
	ram := s.m.mem.host
	saved := ram[off]
	ram[off] = opHLT
	err = s.applyDebug(Debug{})
	var ex StepExit
	if err == nil {
		ex, err = s.runOnce()
	}
	ram[off] = saved
	if err != nil || ex.Reason != StepHalt {
		return ex, err
	}
	if s.injected || ex.RIP != handler+1 && ex.RIP != handler {
		return StepExit{}, fmt.Errorf("delivering vector %d: halted at %#x, not at its handler %#x", s.injectedVec, ex.RIP, handler)
	}
	s.regs.RIP = handler
	if err := kvm.SetRegs(uintptr(s.v.fd), &s.regs); err != nil {
		s.regsOK = false
		return StepExit{}, fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	return StepExit{Reason: StepDebug, Stepped: true, RIP: handler}, nil
}

// physical translates a linear address through the guest's page tables
// (KVM_TRANSLATE). Precondition: on the vCPU's thread.
func (s *Stepper) physical(lin uint64) (uint64, error) {
	t := kvm.Translation{LinearAddress: lin}
	if err := kvm.Translate(uintptr(s.v.fd), &t); err != nil {
		return 0, fmt.Errorf("KVM_TRANSLATE %#x: %w", lin, err)
	}
	if t.Valid == 0 {
		return 0, fmt.Errorf("linear address %#x is not mapped", lin)
	}
	return t.PhysicalAddress, nil
}

// handler returns the entry point of vector vec's handler from the guest's
// 64-bit IDT. Precondition: on the vCPU's thread.
func (s *Stepper) handler(vec uint8) (uint64, error) {
	sregs, err := kvm.GetSregs(uintptr(s.v.fd))
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	if sregs.EFER&eferLMA == 0 {
		return 0, fmt.Errorf("the guest is not in long mode (EFER %#x): only a 64-bit IDT is read", sregs.EFER)
	}
	if uint64(vec)*16+15 > uint64(sregs.IDT.Limit) {
		return 0, fmt.Errorf("vector %d is beyond the IDT's limit %#x", vec, sregs.IDT.Limit)
	}
	var gate [16]byte
	if err := s.readLinear(sregs.IDT.Base+uint64(vec)*16, gate[:]); err != nil {
		return 0, err
	}
	return idtGateOffset(gate)
}

// idtGateOffset decodes a 64-bit IDT gate descriptor's handler offset; the
// gate must be a present interrupt or trap gate.
func idtGateOffset(g [16]byte) (uint64, error) {
	typ := g[5] & 0x0f
	if g[5]&0x80 == 0 || typ != 0xe && typ != 0xf {
		return 0, fmt.Errorf("IDT gate %x is not a present interrupt or trap gate", g)
	}
	le := binary.LittleEndian
	return uint64(le.Uint16(g[0:])) | uint64(le.Uint16(g[6:]))<<16 | uint64(le.Uint32(g[8:]))<<32, nil
}
