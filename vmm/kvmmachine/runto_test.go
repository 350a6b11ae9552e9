package kvmmachine

import (
	"errors"
	"fmt"
	"math/rand"
	"testing"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// modelCPU is a tiny machine that honours vmm.Stepper's contract as this
// KVM behaves: a hardware breakpoint fires whenever the guest is at its
// address at an instruction boundary, at entry too (RFLAGS.RF is ignored);
// a single step stops after one instruction, or at the handler's first
// instruction when it delivers an interrupt; a stepped HLT is StepHalt; an
// access completed by Complete is applied at the next entry (or by Settle),
// after which a single step stops at once; a kick is taken at the next
// boundary, after a completion and before a delivery.
type modelCPU struct {
	prog   []modelInsn
	rip    uint64
	stack  []uint64
	halted bool
	// pending: an OUT awaits Complete; completing: it will be applied at the
	// next entry; intr: an interrupt awaits delivery.
	pending, completing, intr bool
	// executed counts instructions: two stops are the same point of the
	// execution only if it is equal.
	executed int
	// kickDue: a kick arrives every modelKickEvery instructions, at the
	// same point of the execution whatever the mode.
	kickDue bool
}

type modelOp uint8

const (
	opNop modelOp = iota
	opJmp
	opOut
	opHlt
	opIret
)

type modelInsn struct {
	op     modelOp
	target uint64
}

// modelHandler is where interrupts go.
const modelHandler = 100

const modelKickEvery = 500

// retire counts an executed instruction.
func (c *modelCPU) retire() {
	c.executed++
	if c.executed%modelKickEvery == 0 {
		c.kickDue = true
	}
}

// kicked consumes a due kick.
func (c *modelCPU) kicked() (vmm.StepExit, bool) {
	if !c.kickDue {
		return vmm.StepExit{}, false
	}
	c.kickDue = false
	return vmm.StepExit{Reason: vmm.StepKicked, RIP: c.rip}, true
}

func (c *modelCPU) Enter(d vmm.Debug) (vmm.StepExit, error) {
	switch {
	case d.Break && d.SingleStep:
		return vmm.StepExit{}, errors.New("breakpoint and single step")
	case c.halted:
		return vmm.StepExit{}, errors.New("halted")
	case c.pending:
		return vmm.StepExit{}, errors.New("not completed")
	}
	stepped := func() (vmm.StepExit, error) {
		return vmm.StepExit{Reason: vmm.StepDebug, Stepped: true, RIP: c.rip}, nil
	}
	if c.completing {
		c.completing = false
		c.rip++
		c.retire()
		if d.SingleStep {
			return stepped()
		}
	}
	if e, ok := c.kicked(); ok {
		return e, nil
	}
	if c.intr {
		c.intr = false
		c.stack = append(c.stack, c.rip)
		c.rip = modelHandler
		if d.SingleStep {
			return stepped()
		}
	}
	for {
		if d.Break && c.rip == d.BreakRIP {
			return vmm.StepExit{Reason: vmm.StepDebug, AtBreak: true, RIP: c.rip}, nil
		}
		if e, ok := c.kicked(); ok {
			return e, nil
		}
		in := c.prog[c.rip]
		switch in.op {
		case opNop:
			c.rip++
		case opJmp:
			c.rip = in.target
		case opOut:
			c.pending = true
			return vmm.StepExit{Reason: vmm.StepPIO, Write: true, Addr: 0x80, Size: 1, RIP: c.rip}, nil
		case opHlt:
			c.rip++
			c.retire()
			c.halted = true
			return vmm.StepExit{Reason: vmm.StepHalt, RIP: c.rip}, nil
		case opIret:
			c.rip = c.stack[len(c.stack)-1]
			c.stack = c.stack[:len(c.stack)-1]
		}
		c.retire()
		if d.SingleStep {
			return stepped()
		}
	}
}

func (c *modelCPU) RIP() (uint64, error) { return c.rip, nil }

func (c *modelCPU) Settle() error {
	if c.completing {
		c.completing = false
		c.rip++
		c.retire()
	}
	return nil
}

func (c *modelCPU) complete() { c.pending, c.completing = false, true }

// inject is Inject delivering an interrupt.
func (c *modelCPU) inject() { c.intr, c.halted = true, false }

// randomProgram is a main loop at 0..15 (NOPs, jumps, OUTs, HLTs) and an
// interrupt handler at modelHandler (NOP, OUT, IRET).
func randomProgram(r *rand.Rand) []modelInsn {
	p := make([]modelInsn, modelHandler+3)
	for i := 0; i < 16; i++ {
		switch x := r.Intn(10); {
		case x < 5:
			p[i] = modelInsn{op: opNop}
		case x < 7:
			p[i] = modelInsn{op: opJmp, target: uint64(r.Intn(16))}
		case x < 9:
			p[i] = modelInsn{op: opOut}
		default:
			p[i] = modelInsn{op: opHlt}
		}
	}
	p[15] = modelInsn{op: opJmp, target: uint64(r.Intn(15))}
	p[modelHandler] = modelInsn{op: opNop}
	p[modelHandler+1] = modelInsn{op: opOut}
	p[modelHandler+2] = modelInsn{op: opIret}
	return p
}

// TestLandingModesAgree drives the hardware-breakpoint RunTo and the
// single-step RunTo through the same random scenarios (runs, landings on
// random addresses, accesses, HLTs, interrupts) on two model CPUs: every
// stop must be the same kind at the same RIP after the same number of
// instructions, every breakpoint stop at the address asked for, and a
// RunTo after a breakpoint stop must make progress.
func TestLandingModesAgree(t *testing.T) {
	for seed := int64(1); seed <= 300; seed++ {
		r := rand.New(rand.NewSource(seed))
		prog := randomProgram(r)
		hw, ss := &modelCPU{prog: prog}, &modelCPU{prog: prog}
		lhw, lss := &kvmLanding{}, &kvmLanding{singleStep: true}
		var lastBreak *uint64
		for op := 0; op < 60; op++ {
			if hw.halted {
				hw.inject()
				ss.inject()
				lhw.delivered()
				lss.delivered()
			} else if r.Intn(8) == 0 && !hw.intr && len(hw.stack) == 0 {
				hw.inject()
				ss.inject()
				lhw.delivered()
				lss.delivered()
				lastBreak = nil
			}
			var a, b vmm.StepExit
			var errA, errB error
			what := "run"
			if r.Intn(4) == 0 {
				a, errA = lhw.run(hw)
				b, errB = lss.run(ss)
				lastBreak = nil
			} else {
				rip := uint64(r.Intn(16))
				if r.Intn(3) == 0 {
					rip = modelHandler + uint64(r.Intn(3))
				}
				if lastBreak != nil && r.Intn(2) == 0 {
					rip = *lastBreak // land again where we are
				}
				what = fmt.Sprintf("runTo(%d)", rip)
				before := hw.executed
				a, errA = lhw.runTo(hw, rip)
				b, errB = lss.runTo(ss, rip)
				if errA == nil && a.Reason == vmm.StepDebug {
					if a.RIP != rip {
						t.Fatalf("seed %d op %d: %s stopped at %d", seed, op, what, a.RIP)
					}
					if lastBreak != nil && *lastBreak == rip && hw.executed == before {
						t.Fatalf("seed %d op %d: %s after a stop at %d made no progress", seed, op, what, rip)
					}
					lastBreak = &rip
				} else {
					lastBreak = nil
				}
			}
			if errA != nil || errB != nil {
				t.Fatalf("seed %d op %d %s: %v / %v", seed, op, what, errA, errB)
			}
			if a.Reason != b.Reason || a.RIP != b.RIP || a.AtBreak != b.AtBreak || hw.executed != ss.executed {
				t.Fatalf("seed %d op %d %s: breakpoint mode stopped at %v after %d instructions, single-step mode at %v after %d",
					seed, op, what, a, hw.executed, b, ss.executed)
			}
			if a.Reason == vmm.StepPIO {
				hw.complete()
				ss.complete()
			}
		}
	}
}

// TestLandingAtOnce: RunTo of where the guest is stops there without
// executing anything; the next RunTo of the same address executes the
// instruction first, in both modes.
func TestLandingAtOnce(t *testing.T) {
	// 0: nop, 1: nop, 2: jmp 0
	prog := []modelInsn{{op: opNop}, {op: opNop}, {op: opJmp, target: 0}}
	for _, single := range []bool{false, true} {
		c, l := &modelCPU{prog: prog}, &kvmLanding{singleStep: single}
		for i := 0; i < 3; i++ {
			e, err := l.runTo(c, 0)
			if err != nil || e.Reason != vmm.StepDebug || !e.AtBreak || e.RIP != 0 || c.executed != 3*i {
				t.Fatalf("single=%v landing %d: %v, %v after %d instructions", single, i, e, err, c.executed)
			}
		}
		// An interrupt injected at the breakpoint: RunTo stops before its
		// delivery, then the handler runs and the guest comes back to the
		// address without executing it.
		c.prog = append(c.prog, make([]modelInsn, modelHandler)...)
		c.prog[modelHandler], c.prog[modelHandler+1], c.prog[modelHandler+2] = modelInsn{op: opNop}, modelInsn{op: opNop}, modelInsn{op: opIret}
		c.inject()
		l.delivered()
		for i, want := range []int{6, 6 + 3} {
			e, err := l.runTo(c, 0)
			if err != nil || !e.AtBreak || e.RIP != 0 || c.executed != want || c.intr != (i == 0) {
				t.Fatalf("single=%v after an interrupt, landing %d: %v, %v after %d instructions", single, i, e, err, c.executed)
			}
		}
	}
}

// TestLandingPastAnAccess: the instruction at a breakpoint is an OUT; the
// step past it stops at the access, and the next RunTo finishes the step
// once it is completed.
func TestLandingPastAnAccess(t *testing.T) {
	prog := []modelInsn{{op: opOut}, {op: opNop}, {op: opJmp, target: 0}}
	for _, single := range []bool{false, true} {
		c, l := &modelCPU{prog: prog}, &kvmLanding{singleStep: single}
		if e, err := l.runTo(c, 0); err != nil || !e.AtBreak {
			t.Fatalf("single=%v: %v, %v", single, e, err)
		}
		e, err := l.runTo(c, 0)
		if err != nil || e.Reason != vmm.StepPIO || e.RIP != 0 {
			t.Fatalf("single=%v: %v, %v; want the OUT at 0", single, e, err)
		}
		c.complete()
		e, err = l.runTo(c, 0)
		if err != nil || !e.AtBreak || e.RIP != 0 || c.executed != 3 {
			t.Fatalf("single=%v: %v, %v after %d instructions; want the loop back at 0 after 3", single, e, err, c.executed)
		}
	}
}

func TestKVMExitConversion(t *testing.T) {
	data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	for _, c := range []struct {
		s    vmm.StepExit
		kind machine.ExitKind
	}{
		{vmm.StepExit{Reason: vmm.StepPIO, Write: true, Addr: 0x3f8, Size: 1, Data: data, RIP: 9}, machine.ExitPIOWrite},
		{vmm.StepExit{Reason: vmm.StepPIO, Addr: 0x520, Size: 4, RIP: 9}, machine.ExitPIORead},
		{vmm.StepExit{Reason: vmm.StepMMIO, Write: true, Addr: 0xfee00000, Size: 8, Data: data, RIP: 9}, machine.ExitMMIOWrite},
		{vmm.StepExit{Reason: vmm.StepMMIO, Addr: 0xfee00000, Size: 2, RIP: 9}, machine.ExitMMIORead},
		{vmm.StepExit{Reason: vmm.StepHalt, RIP: 9}, machine.ExitHalt},
		{vmm.StepExit{Reason: vmm.StepWindow, RIP: 9}, machine.ExitWindow},
		{vmm.StepExit{Reason: vmm.StepKicked, RIP: 9}, machine.ExitKicked},
		{vmm.StepExit{Reason: vmm.StepDebug, AtBreak: true, DR6: 1, RIP: 9}, machine.ExitBreakpoint},
	} {
		e, err := kvmExit(c.s)
		if err != nil || e.Kind != c.kind || e.RIP != 9 {
			t.Errorf("%v: %v, %v; want %v", c.s, e, err, c.kind)
			continue
		}
		if !c.kind.IsIO() {
			if e.Addr != 0 || e.Size != 0 || e.Data != ([8]byte{}) {
				t.Errorf("%v: %v carries access fields", c.s, e)
			}
			if _, err := kvmStepExit(&e); err == nil {
				t.Errorf("%v: completing it was accepted", e)
			}
			continue
		}
		back, err := kvmStepExit(&e)
		if err != nil || back.Reason != c.s.Reason || back.Write != c.s.Write || back.Addr != c.s.Addr || back.Size != c.s.Size || back.Data != c.s.Data {
			t.Errorf("%v: back as %v, %v", c.s, back, err)
		}
	}
	for _, s := range []vmm.StepExit{{Reason: vmm.StepDebug, Stepped: true}, {}, {Reason: 99}} {
		if e, err := kvmExit(s); err == nil {
			t.Errorf("%v converted to %v", s, e)
		}
	}
}
