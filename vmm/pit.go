package vmm

import "sync"

// pitHz is the 8254's input clock.
const pitHz = 1193182

// PIT is an 8254 programmable interval timer's channel 0 (ports 0x40 and
// 0x43), wired to IRQ 0 of the userspace PIC, for machines without the
// in-kernel irqchip. Its time is the guest clock (which continues across
// save and restore), not the host's: Poll, called by the vCPU thread at each
// exit, raises the interrupts that came due.
//
// mu protects st.
type PIT struct {
	mu  sync.Mutex
	st  pitState
	irq func(level bool)
}

// pitState is channel 0's plain-data state.
type pitState struct {
	Mode, Access uint8
	// Reload is the programmed count (0 means 65536).
	Reload uint16
	// WriteHigh: the next data write is the high byte (lo/hi access);
	// ReadHigh likewise for reads.
	WriteHigh, ReadHigh uint8
	// Latched and LatchedCount hold a latched count for reading.
	Latched      uint8
	LatchedCount uint16
	// Armed is set once a count has been written; StartNS is the guest
	// time counting began, NextNS the guest time of the next interrupt.
	Armed           uint8
	StartNS, NextNS uint64
}

// NewPIT returns a PIT whose interrupt line is irq.
func NewPIT(irq func(level bool)) *PIT { return &PIT{irq: irq} }

func (st *pitState) periodNS() uint64 {
	n := uint64(st.Reload)
	if n == 0 {
		n = 1 << 16
	}
	return n * 1e9 / pitHz
}

func (st *pitState) periodic() bool { return st.Mode == 2 || st.Mode == 3 }

// count returns the counter's value at guest time now.
func (st *pitState) count(now uint64) uint16 {
	if st.Armed == 0 || now < st.StartNS {
		return st.Reload
	}
	reload := uint64(st.Reload)
	if reload == 0 {
		reload = 1 << 16
	}
	elapsed := (now - st.StartNS) * pitHz / 1e9
	if st.periodic() {
		return uint16(reload - elapsed%reload)
	}
	if elapsed >= reload {
		return 0
	}
	return uint16(reload - elapsed)
}

// Poll raises IRQ 0 if an interrupt came due by guest time now. Periods the
// guest missed are not replayed (as KVM's PIT with reinjection off): one
// interrupt, and the next is scheduled after now.
func (p *PIT) Poll(now uint64) {
	p.mu.Lock()
	st := &p.st
	fire := st.Armed != 0 && st.NextNS != 0 && now >= st.NextNS
	if fire {
		if st.periodic() {
			period := st.periodNS()
			st.NextNS += (now-st.NextNS)/period*period + period
		} else {
			st.NextNS = 0
		}
	}
	p.mu.Unlock()
	if fire {
		p.irq(true)
		p.irq(false)
	}
}

// Deadline returns the guest time of the next interrupt, if one is due.
func (p *PIT) Deadline() (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st.NextNS, p.st.Armed != 0 && p.st.NextNS != 0
}

// pitPorts is the PIT's I/O port face; now gives guest time.
type pitPorts struct {
	pit *PIT
	now func() uint64
}

// PIORead implements PIODevice (channel 0 data port).
func (pp *pitPorts) PIORead(port uint16, data []byte) {
	p := pp.pit
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range data {
		data[i] = 0
	}
	if port != 0x40 {
		return
	}
	st := &p.st
	c := st.count(pp.now())
	if st.Latched != 0 {
		c = st.LatchedCount
	}
	switch {
	case st.Access == 1:
		data[0] = uint8(c)
		st.Latched = 0
	case st.Access == 2:
		data[0] = uint8(c >> 8)
		st.Latched = 0
	case st.ReadHigh == 0:
		data[0] = uint8(c)
		st.ReadHigh = 1
	default:
		data[0] = uint8(c >> 8)
		st.ReadHigh = 0
		st.Latched = 0
	}
}

// PIOWrite implements PIODevice.
func (pp *pitPorts) PIOWrite(port uint16, data []byte) {
	p := pp.pit
	p.mu.Lock()
	defer p.mu.Unlock()
	st, v := &p.st, data[0]
	switch port {
	case 0x43:
		if v>>6 != 0 {
			return // channels 1 and 2, and read-back, are not modelled
		}
		if access := v >> 4 & 3; access == 0 {
			st.Latched, st.LatchedCount = 1, st.count(pp.now())
		} else {
			st.Access, st.Mode = access, v>>1&7
			if st.Mode > 5 {
				st.Mode &= 3 // modes 6 and 7 alias 2 and 3
			}
			st.WriteHigh, st.ReadHigh, st.Armed = 0, 0, 0
		}
	case 0x40:
		switch {
		case st.Access == 1:
			st.Reload = st.Reload&0xff00 | uint16(v)
		case st.Access == 2:
			st.Reload = st.Reload&0x00ff | uint16(v)<<8
		case st.WriteHigh == 0:
			st.Reload = st.Reload&0xff00 | uint16(v)
			st.WriteHigh = 1
			return // counting starts after the high byte
		default:
			st.Reload = st.Reload&0x00ff | uint16(v)<<8
			st.WriteHigh = 0
		}
		now := pp.now()
		st.Armed, st.StartNS = 1, now
		st.NextNS = now + st.periodNS()
	}
}

var _ Device = (*PIT)(nil)

// Quiesce implements Quiescer. Nothing to do: the PIT raises an interrupt
// only when polled, by a vCPU thread or a Stepper's owner, never on its own.
func (p *PIT) Quiesce() {}

// Wake implements Quiescer: Quiesce stopped nothing.
func (p *PIT) Wake() {}

// ID implements Component.
func (p *PIT) ID() string { return "pit" }

// StateVersion implements Component.
func (p *PIT) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (p *PIT) SaveState() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return encodePlain(&p.st)
}

// RestoreState implements Component.
func (p *PIT) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(p.ID(), version, p.StateVersion()); err != nil {
		return err
	}
	var st pitState
	if err := decodePlain(data, &st); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.st = st
	return nil
}
