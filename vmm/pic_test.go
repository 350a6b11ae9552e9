package vmm

import (
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"
)

// initPIC programs the pair as guests do: vectors 32 and 40, ICW4, all
// unmasked.
func initPIC(p *PIC, autoEOI bool) {
	icw4 := byte(0x01)
	if autoEOI {
		icw4 |= 0x02
	}
	for _, w := range []struct {
		port uint16
		v    byte
	}{
		{0x20, 0x11}, {0x21, 32}, {0x21, 4}, {0x21, icw4},
		{0xa0, 0x11}, {0xa1, 40}, {0xa1, 2}, {0xa1, icw4},
		{0x21, 0x00}, {0xa1, 0x00},
	} {
		p.PIOWrite(w.port, []byte{w.v})
	}
}

func TestPICPriorityCascadeAndEOI(t *testing.T) {
	p := NewPIC(nil)
	initPIC(p, false)
	p.SetIRQ(4, true)
	p.SetIRQ(9, true) // slave IRQ 1, via master IRQ 2: higher priority than 4
	p.SetIRQ(0, true)
	want := []uint8{32} // IRQ 0 first; then nothing until it is EOI'd
	vec, ok := p.Acknowledge()
	if !ok || vec != want[0] {
		t.Fatalf("first vector %d, %v; want 32", vec, ok)
	}
	if p.Pending() {
		t.Fatal("a lower-priority interrupt is pending while IRQ 0 is in service")
	}
	p.PIOWrite(0x20, []byte{0x20}) // EOI
	if vec, _ := p.Acknowledge(); vec != 41 {
		t.Fatalf("second vector %d, want 41 (slave IRQ 1)", vec)
	}
	p.PIOWrite(0xa0, []byte{0x20})
	p.PIOWrite(0x20, []byte{0x20})
	if vec, _ := p.Acknowledge(); vec != 36 {
		t.Fatalf("third vector %d, want 36", vec)
	}
	p.PIOWrite(0x20, []byte{0x20})
	if p.Pending() {
		t.Error("interrupt pending after all were handled")
	}
	// Level held high: no new edge, no new interrupt.
	p.SetIRQ(0, true)
	if p.Pending() {
		t.Error("a held line raised a second interrupt without an edge")
	}
	// Masked line: latched in IRR but not delivered until unmasked.
	p.SetIRQ(0, false)
	p.PIOWrite(0x21, []byte{0x01})
	p.SetIRQ(0, true)
	if p.Pending() {
		t.Error("masked IRQ 0 delivered")
	}
	p.PIOWrite(0x21, []byte{0x00})
	if vec, _ := p.Acknowledge(); vec != 32 {
		t.Errorf("unmasked IRQ 0 gave vector %d", vec)
	}
	roundTrip(t, p, NewPIC(nil))
}

func TestPICAutoEOIAndISRRead(t *testing.T) {
	p := NewPIC(nil)
	initPIC(p, true)
	p.SetIRQ(3, true)
	p.Acknowledge()
	p.PIOWrite(0x20, []byte{0x0b}) // OCW3: read ISR
	d := []byte{0xff}
	p.PIORead(0x20, d)
	if d[0] != 0 {
		t.Errorf("ISR = %#x with auto-EOI, want 0", d[0])
	}
	woken := 0
	q := NewPIC(func() { woken++ })
	initPIC(q, false)
	q.SetIRQ(5, true)
	if woken == 0 {
		t.Error("a pending interrupt did not wake a halted vCPU")
	}
}

func TestPITPeriodicInterrupts(t *testing.T) {
	var raised int
	p := NewPIT(func(level bool) {
		if level {
			raised++
		}
	})
	now := uint64(1000)
	ports := &pitPorts{pit: p, now: func() uint64 { return now }}
	reload := uint16(pitHz / 100)      // 100 Hz
	ports.PIOWrite(0x43, []byte{0x34}) // channel 0, lo/hi, mode 2
	ports.PIOWrite(0x40, []byte{byte(reload)})
	if _, ok := p.Deadline(); ok {
		t.Fatal("armed after only the low byte")
	}
	ports.PIOWrite(0x40, []byte{byte(reload >> 8)})
	deadline, ok := p.Deadline()
	if !ok || deadline < now+9_900_000 || deadline > now+10_100_000 {
		t.Fatalf("deadline %d, want ~10ms after %d", deadline, now)
	}
	p.Poll(deadline - 1)
	if raised != 0 {
		t.Fatal("interrupt before its deadline")
	}
	p.Poll(deadline)
	if raised != 1 {
		t.Fatalf("%d interrupts at the deadline, want 1", raised)
	}
	// Missed periods coalesce into one interrupt, next one in the future.
	now = deadline + 55_000_000
	p.Poll(now)
	if next, _ := p.Deadline(); raised != 2 || next <= now {
		t.Errorf("after a 5-period gap: %d interrupts, next %d (now %d)", raised, next, now)
	}
	// Latch and read the count: lower than the reload.
	ports.PIOWrite(0x43, []byte{0x00})
	lo, hi := []byte{0}, []byte{0}
	ports.PIORead(0x40, lo)
	ports.PIORead(0x40, hi)
	if c := uint16(lo[0]) | uint16(hi[0])<<8; c == 0 || c > reload {
		t.Errorf("latched count %d, reload %d", c, reload)
	}
	roundTrip(t, p, NewPIT(nil))
}

// TestInterruptWindowExitIsHandled: without the in-kernel irqchip a vCPU
// asks KVM for an exit when the guest can take a pending interrupt
// (request_interrupt_window); that exit resumes the run loop, which injects
// it. On a slow host (KVM under emulation) it happened on every run of the
// tick guest and stopped the machine as an unhandled exit.
func TestInterruptWindowExitIsHandled(t *testing.T) {
	v := &VCPU{m: &Machine{}, runData: &kvm.RunData{ExitReason: uint32(kvm.EXITIRQWINDOWOPEN)}}
	if err := v.handleExit(); err != nil {
		t.Fatalf("KVM_EXIT_IRQ_WINDOW_OPEN: %v", err)
	}
}
