package sim

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// irqProgram counts in r1 forever with interrupts on; isr0 and isr1 count
// their interrupts in r5 and r6.
const irqProgram = `
	.org IVT_BASE
	.quad isr0, isr1
	.org ENTRY
start:
	li r1, 0
	sti
loop:
	add r1, r1, 1
	jmp loop
isr0:
	add r5, r5, 1
	cmp r5, 0		; changes the flags IRET must restore
	iret
isr1:
	add r6, r6, 1
	iret
`

func mustExit(t *testing.T, kind machine.ExitKind, e machine.Exit, err error) machine.Exit {
	t.Helper()
	if err != nil || e.Kind != kind {
		t.Fatalf("got %v, %v; want %v", e, err, kind)
	}
	return e
}

func TestInterruptsAndIRET(t *testing.T) {
	r := newProgramRig(t, irqProgram, 16)
	m := r.m
	p, _ := Assemble(Prelude + irqProgram)
	loop, isr0 := p.Symbols["loop"], p.Symbols["isr0"]

	// IF is off at reset: the interrupt waits, and a window is arranged.
	e, err := m.RunTo(p.Symbols["start"])
	mustExit(t, machine.ExitBreakpoint, e, err)
	if m.Instructions() != 0 {
		t.Fatalf("a breakpoint at the current pc executed %d instructions", m.Instructions())
	}
	m.dev.PIC.raise(IRQTimer)
	if ok, err := m.InjectPending(); ok || err != nil {
		t.Fatalf("delivered with IF=0: %v %v", ok, err)
	}
	// sti opens the window one instruction late: after the add.
	e, err = m.Run()
	mustExit(t, machine.ExitWindow, e, err)
	if e.RIP != loop+InsnSize || m.cpu.R[1] != 1 {
		t.Fatalf("window at %#x with r1=%d, want %#x (after the instruction in sti's shadow) with r1=1", e.RIP, m.cpu.R[1], loop+InsnSize)
	}
	m.cpu.Flags |= FlagCF // flags the handler must get back
	sp := m.cpu.R[15]
	if ok, err := m.InjectPending(); !ok || err != nil {
		t.Fatalf("not delivered with IF=1: %v %v", ok, err)
	}
	if m.cpu.PC != isr0 || m.cpu.Flags&FlagIF != 0 || m.cpu.R[15] != sp-16 {
		t.Fatalf("after delivery pc %#x flags %#x sp %#x; want pc %#x, IF clear, sp %#x", m.cpu.PC, m.cpu.Flags, m.cpu.R[15], isr0, sp-16)
	}
	if ret, fl := m.read64(sp-16), m.read64(sp-8); ret != loop+InsnSize || fl != FlagIF|FlagCF {
		t.Fatalf("pushed pc %#x flags %#x", ret, fl)
	}
	if ok, _ := m.InjectPending(); ok {
		t.Fatal("one raise delivered twice")
	}
	e, err = m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	if m.cpu.R[5] != 1 || m.cpu.R[15] != sp || m.cpu.Flags != FlagIF|FlagCF {
		t.Fatalf("after iret: r5=%d sp=%#x flags=%#x", m.cpu.R[5], m.cpu.R[15], m.cpu.Flags)
	}

	// Priority: the lowest line first; a masked line waits.
	m.dev.PIC.raise(IRQNet)
	m.dev.PIC.raise(IRQTimer)
	m.InjectPending()
	if m.cpu.PC != isr0 {
		t.Fatalf("line 0 and 1 pending: went to %#x", m.cpu.PC)
	}
	e, err = m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	m.InjectPending()
	if m.cpu.PC != p.Symbols["isr1"] {
		t.Fatalf("line 1 left: went to %#x", m.cpu.PC)
	}
	e, err = m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	m.dev.PIC.Mask = 1 << IRQTimer
	m.dev.PIC.raise(IRQTimer)
	if ok, _ := m.InjectPending(); ok || m.cpu.WindowReq {
		t.Fatal("a masked line was delivered or asked for a window")
	}
	m.dev.PIC.Mask = 0
	if ok, _ := m.InjectPending(); !ok {
		t.Fatal("an unmasked line was not delivered")
	}

	// A stack outside RAM: a fault, and nothing changes.
	m.dev.PIC.raise(IRQNet)
	e, err = m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	m.cpu.R[15] = 8
	before, _ := m.SaveState()
	var f *Fault
	if _, err := m.InjectPending(); !errors.As(err, &f) {
		t.Fatalf("delivery onto a stack at 8: %v", err)
	}
	if after, _ := m.SaveState(); string(after) != string(before) {
		t.Fatal("a failed delivery changed the state")
	}
}

func TestHaltAndWake(t *testing.T) {
	r := newProgramRig(t, `
	.org IVT_BASE
	.quad isr0
	.org ENTRY
start:
	sti
	hlt
	add r2, r2, 1
	cli
	hlt
isr0:
	add r5, r5, 1
	iret
`, 16)
	m := r.m
	e, err := m.Run()
	mustExit(t, machine.ExitHalt, e, err)
	if e.RIP != EntryBase+2*InsnSize || !m.Halted() {
		t.Fatalf("halt at %#x, halted %v", e.RIP, m.Halted())
	}
	if _, err := m.Run(); err == nil {
		t.Fatal("Run while halted did not fail")
	}
	if ok, _ := m.InjectPending(); ok || !m.Halted() {
		t.Fatal("woke with nothing pending")
	}
	m.dev.PIC.raise(IRQTimer)
	if ok, _ := m.InjectPending(); !ok || m.Halted() {
		t.Fatal("an interrupt did not wake the halted guest")
	}
	e, err = m.Run()
	mustExit(t, machine.ExitHalt, e, err)
	if m.cpu.R[5] != 1 || m.cpu.R[2] != 1 {
		t.Fatalf("r5=%d r2=%d: the handler or the code after hlt did not run once", m.cpu.R[5], m.cpu.R[2])
	}
	// cli; hlt: an interrupt cannot wake it, a window is arranged instead.
	m.dev.PIC.raise(IRQTimer)
	if ok, _ := m.InjectPending(); ok || !m.Halted() || !m.cpu.WindowReq {
		t.Fatal("cli; hlt: delivered, or no window arranged")
	}
}

func TestWindowComesBeforeKick(t *testing.T) {
	r := newProgramRig(t, irqProgram, 16)
	m := r.m
	m.dev.PIC.raise(IRQTimer)
	m.InjectPending() // IF=0: window
	e, err := m.Run()
	mustExit(t, machine.ExitWindow, e, err)
	m.cpu.WindowReq = true
	m.Kick()
	n := m.Instructions()
	e2, err := m.Run()
	mustExit(t, machine.ExitWindow, e2, err)
	e3, err := m.Run()
	mustExit(t, machine.ExitKicked, e3, err)
	if m.Instructions() != n || e2.RIP != e.RIP || e3.RIP != e.RIP {
		t.Fatalf("window then kick at %#x, %#x (first window %#x) after %d instructions", e2.RIP, e3.RIP, e.RIP, m.Instructions()-n)
	}
	// Without a pending interrupt InjectPending withdraws the window.
	m.cpu.WindowReq = true
	m.dev.PIC.Pending = 0
	m.InjectPending()
	m.Kick()
	e, err = m.RunTo(noBreakpoint - 1)
	mustExit(t, machine.ExitKicked, e, err)
}

func TestRunTo(t *testing.T) {
	const src = `
	.org ENTRY
start:
	li r1, 0
loop:
	add r1, r1, 1
	cmp r1, 10
	jne loop
	hlt
`
	p, _ := Assemble(Prelude + src)
	loop := p.Symbols["loop"]
	r := newProgramRig(t, src, 16)
	m := r.m
	var hits []uint64
	for {
		e, err := m.RunTo(loop)
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == machine.ExitHalt {
			break
		}
		mustExit(t, machine.ExitBreakpoint, e, err)
		if e.RIP != loop || m.cpu.PC != loop {
			t.Fatalf("breakpoint at %#x (pc %#x), want %#x", e.RIP, m.cpu.PC, loop)
		}
		hits = append(hits, m.cpu.R[1])
	}
	if len(hits) != 10 {
		t.Fatalf("hit the loop %d times (%v), want 10", len(hits), hits)
	}
	for i, v := range hits {
		if v != uint64(i) {
			t.Fatalf("hit %d with r1=%d", i, v)
		}
	}

	// Run after a breakpoint ignores it; a breakpoint elsewhere is not
	// resumed from.
	r = newProgramRig(t, src, 16)
	e, err := r.m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	e, err = r.m.Run()
	mustExit(t, machine.ExitHalt, e, err)
	if r.m.cpu.R[1] != 10 {
		t.Fatalf("r1=%d", r.m.cpu.R[1])
	}
	r = newProgramRig(t, src, 16)
	e, err = r.m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	e, err = r.m.RunTo(loop + InsnSize)
	mustExit(t, machine.ExitBreakpoint, e, err)
	e, err = r.m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	if r.m.cpu.R[1] != 1 {
		t.Fatalf("r1=%d after two breakpoints: a resumed instruction was skipped or repeated", r.m.cpu.R[1])
	}
}

func TestRunToAfterInterrupt(t *testing.T) {
	// A breakpoint where an interrupt landed stops again when the
	// handler returns there: the resume applies to the same pc only
	// while nothing else moved the guest.
	r := newProgramRig(t, irqProgram, 16)
	m := r.m
	p, _ := Assemble(Prelude + irqProgram)
	loop := p.Symbols["loop"]
	m.cpu.Flags |= FlagIF
	m.cpu.PC = loop
	e, err := m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	m.dev.PIC.raise(IRQTimer)
	if ok, _ := m.InjectPending(); !ok {
		t.Fatal("not delivered")
	}
	e, err = m.RunTo(loop)
	mustExit(t, machine.ExitBreakpoint, e, err)
	if m.cpu.R[5] != 1 || m.cpu.R[1] != 0 {
		t.Fatalf("r5=%d r1=%d: want the handler run and the loop not", m.cpu.R[5], m.cpu.R[1])
	}
}

func TestKickBeforeRun(t *testing.T) {
	r := newProgramRig(t, irqProgram, 16)
	m := r.m
	m.Kick()
	e, err := m.Run()
	mustExit(t, machine.ExitKicked, e, err)
	if m.Instructions() != 0 || e.RIP != m.cpu.PC || e.RIP != EntryBase {
		t.Fatalf("a kick before Run executed %d instructions, stopped at %#x", m.Instructions(), e.RIP)
	}
	m.Kick()
	m.Kick() // kicks do not queue
	e, err = m.Run()
	mustExit(t, machine.ExitKicked, e, err)
	p, _ := Assemble(Prelude + irqProgram)
	e, err = m.RunTo(p.Symbols["loop"])
	mustExit(t, machine.ExitBreakpoint, e, err)
}

// TestKickLandsAnywhere kicks a running loop from another goroutine: each
// stop is at an instruction boundary with the loop's invariant intact,
// and over many kicks they land at different instructions.
func TestKickLandsAnywhere(t *testing.T) {
	const src = `
	.org ENTRY
start:
loop:
	add r1, r1, 1
	xor r2, r2, r1
	st64 [buf], r2
	add r3, r3, 3
	jmp loop
	.align 8
buf:	.quad 0
`
	p, _ := Assemble(Prelude + src)
	loop := p.Symbols["loop"]
	m := newProgramRig(t, src, 16).m
	seen := map[uint64]int{}
	go1 := make(chan struct{})
	stopKicker := make(chan struct{})
	defer close(stopKicker)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			select {
			case <-go1:
			case <-stopKicker:
				return
			}
			spin := time.Duration(rng.IntN(20)) * time.Microsecond
			for start := time.Now(); time.Since(start) < spin; {
			}
			m.Kick()
		}
	}()
	for i := 0; i < 5000 && (i < 200 || len(seen) < 2); i++ {
		go1 <- struct{}{}
		e, err := m.Run()
		mustExit(t, machine.ExitKicked, e, err)
		off := e.RIP - loop
		if e.RIP < loop || off >= 5*InsnSize || off%InsnSize != 0 {
			t.Fatalf("kicked at %#x: not a boundary of the loop", e.RIP)
		}
		seen[e.RIP]++
		r1, r3 := m.cpu.R[1], m.cpu.R[3]
		want := 3 * r1
		if off >= InsnSize && off <= 3*InsnSize {
			want = 3 * (r1 - 1)
		}
		if r3 != want {
			t.Fatalf("kicked at %#x with r1=%d r3=%d: not a boundary state", e.RIP, r1, r3)
		}
		if off != 2*InsnSize { // everywhere but between xor and st64
			if got := binary.LittleEndian.Uint64(m.mem[p.Symbols["buf"]:]); got != m.cpu.R[2] {
				t.Fatalf("kicked at %#x: memory %#x, r2 %#x", e.RIP, got, m.cpu.R[2])
			}
		}
	}
	if len(seen) < 2 {
		t.Fatalf("every kick landed at the same pc: %v", seen)
	}
	t.Logf("landings by pc offset: %v", seen)
}

// TestMatchesAgreesWithSignature: at every stop of a loop that writes
// memory, Matches(sig) holds exactly when Signature() equals sig — for
// the signature of this stop, of earlier stops (same RIP, other registers
// or memory), and for one that differs only in its dirty hash.
func TestMatchesAgreesWithSignature(t *testing.T) {
	const src = `
	.org ENTRY
start:
	li r1, 0
	li r2, 0x8000
loop:
	st64 [r2], r1
	add r1, r1, 1
	and r1, r1, 3
	jmp loop
`
	p, _ := Assemble(Prelude + src)
	loop := p.Symbols["loop"]
	r := newProgramRig(t, src, 16)
	m := r.m
	if err := m.Mark(); err != nil {
		t.Fatal(err)
	}
	var seen []machine.Signature
	for i := 0; i < 12; i++ {
		e, err := m.RunTo(loop)
		mustExit(t, machine.ExitBreakpoint, e, err)
		now, _ := m.Signature()
		other := now
		other.Dirty ^= 1
		for _, sig := range append(seen, now, other) {
			ok, err := m.Matches(sig)
			if err != nil || ok != (sig == now) {
				t.Fatalf("stop %d: Matches(%+v) = %v, %v; Signature() = %+v", i, sig, ok, err, now)
			}
		}
		seen = append(seen, now)
	}
}

// TestWritten: Written reports the pages the guest wrote since the
// previous Written, whatever Mark did in between (devices' writes take the
// same path, markWrite).
func TestWritten(t *testing.T) {
	const src = `
	.org ENTRY
start:
	li r2, 0x8000
	st64 [r2], r1
	li r2, 0x9ff8
	st64 [r2], r1
	hlt
`
	r := newProgramRig(t, src, 16)
	m := r.m
	written := func() []uint64 {
		b := machine.NewBitmap(16)
		if err := m.Harvest(b); err != nil {
			t.Fatal(err)
		}
		var pages []uint64
		for p := range uint64(16) {
			if b.Has(p) {
				pages = append(pages, p)
			}
		}
		return pages
	}
	written() // whatever building the machine did
	if err := m.Mark(); err != nil {
		t.Fatal(err)
	}
	e, err := m.Run()
	mustExit(t, machine.ExitHalt, e, err)
	if err := m.Mark(); err != nil { // the Signature interval is another
		t.Fatal(err)
	}
	if got := written(); !slices.Equal(got, []uint64{8, 9}) {
		t.Fatalf("Written after two stores = pages %v, want [8 9]", got)
	}
	if got := written(); len(got) != 0 {
		t.Fatalf("Written again = pages %v, want none", got)
	}
	if err := m.Harvest(machine.NewBitmap(8)); err == nil {
		t.Fatal("Written took a bitmap of the wrong size")
	}
}
