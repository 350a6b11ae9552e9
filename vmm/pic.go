package vmm

import "sync"

// PIC is a pair of 8259A interrupt controllers (master on ports 0x20-0x21,
// slave on 0xa0-0xa1, cascaded on the master's IRQ 2), for machines without
// the in-kernel irqchip: the vCPU thread asks it for a vector at each exit
// and injects it with KVM_INTERRUPT. Edge-triggered, fully nested mode, with
// specific and non-specific EOI, auto-EOI, IRR/ISR reads and masking: what
// bare-metal guests and Linux's i8259 driver use.
//
// mu protects st.
type PIC struct {
	mu sync.Mutex
	st picState
	// wake is called (without mu) when an unmasked interrupt becomes
	// pending, to get a halted vCPU going.
	wake func()
}

// pic8259 is one chip's plain-data state.
type pic8259 struct {
	IRR, ISR, IMR uint8
	VectorBase    uint8
	// Lines holds the input levels, for edge detection.
	Lines uint8
	// InitStep is the next ICW expected (0: initialised), ICW4 whether one
	// is coming; ReadISR selects what a read of the command port returns.
	InitStep, ICW4, AutoEOI, ReadISR uint8
}

type picState struct{ Master, Slave pic8259 }

// NewPIC returns a PIC pair in its power-on state (all masked until the
// guest initialises it). wake may be nil.
func NewPIC(wake func()) *PIC {
	p := &PIC{wake: wake}
	p.st.Master.IMR, p.st.Slave.IMR = 0xff, 0xff
	p.st.Master.VectorBase, p.st.Slave.VectorBase = 0x08, 0x70
	return p
}

// SetIRQ sets input line irq (0-15) to level. A rising edge requests an
// interrupt.
func (p *PIC) SetIRQ(irq int, level bool) {
	p.mu.Lock()
	chip, bit := &p.st.Master, uint8(1)<<(irq&7)
	if irq >= 8 {
		chip = &p.st.Slave
	}
	if level && chip.Lines&bit == 0 {
		chip.IRR |= bit
	}
	if level {
		chip.Lines |= bit
	} else {
		chip.Lines &^= bit
	}
	_, _, _, pending := p.pendingLocked()
	p.mu.Unlock()
	if pending && p.wake != nil {
		p.wake()
	}
}

// highest returns the highest-priority (lowest-numbered) bit of bits that
// no in-service interrupt of equal or higher priority blocks.
func highest(bits, isr uint8) (int, bool) {
	for i := 0; i < 8; i++ {
		if isr&(1<<i) != 0 {
			return 0, false
		}
		if bits&(1<<i) != 0 {
			return i, true
		}
	}
	return 0, false
}

// pendingLocked returns the vector the PIC would deliver now, the master's
// input it comes through and, for a cascaded interrupt, the slave's input
// (else -1).
func (p *PIC) pendingLocked() (vec uint8, masterIRQ, slaveIRQ int, ok bool) {
	m, s := &p.st.Master, &p.st.Slave
	sIRQ, slaveOK := highest(s.IRR&^s.IMR, s.ISR)
	masterReq := m.IRR
	if slaveOK {
		masterReq |= 1 << 2
	}
	irq, ok := highest(masterReq&^m.IMR, m.ISR)
	if !ok {
		return 0, 0, -1, false
	}
	if irq == 2 && slaveOK {
		return s.VectorBase + uint8(sIRQ), 2, sIRQ, true
	}
	return m.VectorBase + uint8(irq), irq, -1, true
}

// Pending reports whether an interrupt awaits delivery.
func (p *PIC) Pending() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _, _, ok := p.pendingLocked()
	return ok
}

// Acknowledge is the CPU's INTA cycle: it takes the pending interrupt,
// marks it in service (unless auto-EOI) and returns its vector.
func (p *PIC) Acknowledge() (uint8, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	vec, masterIRQ, slaveIRQ, ok := p.pendingLocked()
	if !ok {
		return 0, false
	}
	ack := func(c *pic8259, irq int) {
		c.IRR &^= 1 << irq
		if c.AutoEOI == 0 {
			c.ISR |= 1 << irq
		}
	}
	ack(&p.st.Master, masterIRQ)
	if slaveIRQ >= 0 {
		ack(&p.st.Slave, slaveIRQ)
	}
	return vec, true
}

// PIORead implements PIODevice.
func (p *PIC) PIORead(port uint16, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.chip(port)
	v := c.IMR
	if port&1 == 0 {
		v = c.IRR
		if c.ReadISR != 0 {
			v = c.ISR
		}
	}
	for i := range data {
		data[i] = 0
	}
	data[0] = v
}

// PIOWrite implements PIODevice.
func (p *PIC) PIOWrite(port uint16, data []byte) {
	p.mu.Lock()
	c, v := p.chip(port), data[0]
	switch {
	case port&1 == 0 && v&0x10 != 0: // ICW1
		*c = pic8259{InitStep: 2, ICW4: v & 1, VectorBase: c.VectorBase, Lines: c.Lines}
	case port&1 == 0 && v&0x18 == 0x08: // OCW3
		if v&0x02 != 0 {
			c.ReadISR = v & 1
		}
	case port&1 == 0: // OCW2
		switch v >> 5 {
		case 1: // non-specific EOI: clear the highest-priority in-service bit
			for i := 0; i < 8; i++ {
				if c.ISR&(1<<i) != 0 {
					c.ISR &^= 1 << i
					break
				}
			}
		case 3: // specific EOI
			c.ISR &^= 1 << (v & 7)
		}
	case c.InitStep == 2: // ICW2
		c.VectorBase = v &^ 7
		c.InitStep = 3
	case c.InitStep == 3: // ICW3 (cascade wiring: fixed here)
		c.InitStep = 0
		if c.ICW4 != 0 {
			c.InitStep = 4
		}
	case c.InitStep == 4: // ICW4
		c.AutoEOI = v >> 1 & 1
		c.InitStep = 0
	default: // OCW1
		c.IMR = v
	}
	_, _, _, pending := p.pendingLocked()
	p.mu.Unlock()
	if pending && p.wake != nil {
		p.wake()
	}
}

func (p *PIC) chip(port uint16) *pic8259 {
	if port >= 0xa0 {
		return &p.st.Slave
	}
	return &p.st.Master
}

var _ Device = (*PIC)(nil)

// Quiesce implements Quiescer. Nothing to do: the PIC touches no guest
// memory, and its inputs change only on vCPU threads (port accesses, the
// PIT they poll) and from devices that quiesce themselves.
func (p *PIC) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (p *PIC) Wake() {}

// ID implements Component.
func (p *PIC) ID() string { return "pic" }

// StateVersion implements Component.
func (p *PIC) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (p *PIC) SaveState() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return encodePlain(&p.st)
}

// RestoreState implements Component.
func (p *PIC) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(p.ID(), version, p.StateVersion()); err != nil {
		return err
	}
	var st picState
	if err := decodePlain(data, &st); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st = st
	return nil
}
