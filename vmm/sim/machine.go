package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Guest-physical layout.
const (
	// PageSize is the granularity of dirty tracking.
	PageSize = 4096
	// IVTBase is the interrupt vector table: vector v's handler address is
	// the 8-byte word at IVTBase + 8*v. Programs fill it as data.
	IVTBase = 0
	// NumVectors is the number of vectors, one per interrupt line.
	NumVectors = 8
	// MMIOBase is where the network device's registers start. RAM ends
	// below it; every access at or above the end of RAM is MMIO.
	MMIOBase = 0xf000_0000
	// MaxPages is the most RAM a Machine has.
	MaxPages = MMIOBase / PageSize
)

// Machine is a deterministic software computer with one vCPU, RAM and the
// devices of devices.go, implementing machine.Stepper: the stand-in for KVM
// where /dev/kvm cannot be opened.
//
// At reset pc is the program's entry, sp (r15) the end of RAM, every other
// register and the flags zero (interrupts off).
//
// Locking: as machine.Stepper says, one goroutine (the engine) calls every
// method but Kick, which any goroutine may call.
type Machine struct {
	env machine.Env
	mem []byte

	cpu cpu     // architectural state: saved by SaveState
	dev devices // device state: saved by SaveState

	// dirty has a bit per page written since the last Mark; stale a bit
	// per page written since its hash in pageHash was computed (see
	// signature.go). Every write to RAM, the guest's and the devices',
	// goes through markWrite. written has a bit per page written since
	// the last Harvest.
	dirty    []uint64
	stale    []uint64
	written  []uint64
	pageHash []uint64

	// kick is set by Kick and consumed by the run that returns
	// ExitKicked.
	kick atomic.Bool
	// resume is the pc of the last ExitBreakpoint while resumeSet: the
	// next run executes the instruction there before stopping at it.
	resume    uint64
	resumeSet bool
	// instructions counts the instructions this Machine executed. Not
	// machine state: two equivalent points may differ in it.
	instructions atomic.Uint64
}

// cpu is the vCPU's state, plain data.
type cpu struct {
	// R is r0..r15; R[regNone] reads as zero for absolute addresses and is
	// never written.
	R     [17]uint64
	PC    uint64
	Flags uint64
	// Shadow blocks interrupts for the instruction after sti.
	Shadow bool
	// Halted: the guest executed hlt and waits for an interrupt.
	Halted bool
	// WindowReq: InjectPending asked for an ExitWindow when the guest can
	// take an interrupt.
	WindowReq bool
	// Off: the guest powered the machine off, with status OffStatus.
	Off       bool
	OffStatus uint8
	// Pend is the access of the last PIO or MMIO exit until Complete
	// performs it; pc stays at its instruction until then.
	Pend access
}

// access is a pending PIO or MMIO access.
type access struct {
	Kind machine.ExitKind // 0: none
	Addr uint64
	Size uint8
	Reg  uint8  // reads: the destination register
	Data uint64 // writes: the value
}

// Fault is a guest error the hardware would turn into an exception: an
// invalid instruction, an access straddling the end of RAM, a division by
// zero, a stack outside RAM. Run returns it with pc left at the faulting
// instruction, so running again faults again.
type Fault struct {
	RIP    uint64
	Reason string
}

func (f *Fault) Error() string { return fmt.Sprintf("guest fault at rip %#x: %s", f.RIP, f.Reason) }

var _ machine.Stepper = (*Machine)(nil)

// NewProgram builds a machine with memPages pages of RAM holding p's image
// at guest-physical 0, reset to p's entry. It does not call env (which may
// be a replay.Plug not yet plugged in).
func NewProgram(p *Program, memPages int, env machine.Env) (*Machine, error) {
	if memPages < 1 || memPages > MaxPages {
		return nil, fmt.Errorf("%d pages of RAM: must be 1 to %d", memPages, MaxPages)
	}
	if env == nil {
		return nil, errors.New("no Env")
	}
	size := uint64(memPages) * PageSize
	if uint64(len(p.Image)) > size {
		return nil, fmt.Errorf("a %d-byte program does not fit in %d bytes of RAM", len(p.Image), size)
	}
	words := (memPages + 63) / 64
	m := &Machine{
		env:      env,
		mem:      make([]byte, size),
		dirty:    make([]uint64, words),
		stale:    make([]uint64, words),
		written:  make([]uint64, words),
		pageHash: make([]uint64, memPages),
	}
	copy(m.mem, p.Image)
	m.cpu.PC = p.Entry
	m.cpu.R[15] = size
	return m, nil
}

// Instructions returns how many instructions this Machine has executed
// (an access counts when it exits). It is a statistic, not machine state:
// RestoreState leaves it alone. Safe to call from any goroutine.
func (m *Machine) Instructions() uint64 { return m.instructions.Load() }

// Memory implements machine.Stepper. Writes made through it are not seen
// by the dirty tracking: make them only before RestoreState.
func (m *Machine) Memory() []byte { return m.mem }

// Run implements machine.Stepper.
func (m *Machine) Run() (machine.Exit, error) { return m.run(noBreakpoint) }

// RunTo implements machine.Stepper. If rip is where the last ExitBreakpoint
// stopped and the guest is still there, the instruction at rip runs first.
func (m *Machine) RunTo(rip uint64) (machine.Exit, error) { return m.run(rip) }

// Kick implements machine.Stepper. Safe from any goroutine.
func (m *Machine) Kick() { m.kick.Store(true) }

// Halted implements machine.Stepper.
func (m *Machine) Halted() bool { return m.cpu.Halted }

// Complete implements machine.Stepper: it performs the access of the exit
// Run returned last, which e must be, and moves the guest past it.
func (m *Machine) Complete(e *machine.Exit) error {
	p := &m.cpu.Pend
	if p.Kind == 0 {
		return fmt.Errorf("complete %v: no access is pending", e)
	}
	if e.Kind != p.Kind || e.Addr != p.Addr || e.Size != p.Size ||
		!e.Kind.IsRead() && binary.LittleEndian.Uint64(e.Data[:]) != p.Data {
		return fmt.Errorf("complete %v: the pending access is %v", e, p.exit(m.cpu.PC))
	}
	var v uint64
	var err error
	switch p.Kind {
	case machine.ExitPIORead:
		v, err = m.pioRead(uint16(p.Addr), p.Size)
	case machine.ExitPIOWrite:
		err = m.pioWrite(uint16(p.Addr), p.Size, p.Data)
	case machine.ExitMMIORead:
		v, err = m.mmioRead(p.Addr, p.Size)
	case machine.ExitMMIOWrite:
		err = m.mmioWrite(p.Addr, p.Size, p.Data)
	}
	if err != nil && !errors.Is(err, machine.ErrPowerOff) {
		return fmt.Errorf("complete %v: %w", e, err) // fatal; the access stays pending
	}
	if p.Kind.IsRead() {
		v &= sizeMask(p.Size)
		m.cpu.R[p.Reg] = v
		binary.LittleEndian.PutUint64(e.Data[:], v)
		clear(e.Data[p.Size:])
	}
	*p = access{}
	m.cpu.PC += InsnSize
	return err
}

func sizeMask(size uint8) uint64 { return 1<<(8*uint64(size)-1)<<1 - 1 }

// exit is the Exit of a pending access at pc.
func (p *access) exit(pc uint64) machine.Exit {
	e := machine.Exit{Kind: p.Kind, Addr: p.Addr, Size: p.Size, RIP: pc}
	if !p.Kind.IsRead() {
		binary.LittleEndian.PutUint64(e.Data[:], p.Data)
	}
	return e
}

// InjectPending implements machine.Stepper: the highest-priority pending
// interrupt (the lowest unmasked line) is delivered if IF is set and no sti
// shadow blocks it: flags then pc are pushed, IF cleared, and pc set to the
// vector's handler. Otherwise a pending interrupt arranges an ExitWindow;
// without one, any earlier arrangement is dropped.
func (m *Machine) InjectPending() (bool, error) {
	c := &m.cpu
	if c.Pend.Kind != 0 {
		return false, fmt.Errorf("inject: the access of %v is not completed", c.Pend.exit(c.PC))
	}
	line, ok := m.dev.PIC.next()
	if !ok || c.Off {
		c.WindowReq = false
		return false, nil
	}
	if c.Flags&FlagIF == 0 || c.Shadow {
		c.WindowReq = true
		return false, nil
	}
	handler := m.read64(IVTBase + 8*uint64(line))
	sp := c.R[15] - 16
	if sp > c.R[15] || sp > uint64(len(m.mem))-16 {
		return false, &Fault{RIP: c.PC, Reason: fmt.Sprintf("interrupt %d: stack pointer %#x outside RAM", line, c.R[15])}
	}
	m.write64(sp+8, c.Flags)
	m.write64(sp, c.PC)
	c.R[15] = sp
	c.Flags &^= FlagIF
	c.PC = handler
	c.Halted = false
	c.WindowReq = false
	m.resumeSet = false
	m.dev.PIC.ack(line)
	return true, nil
}

// TimerDeadline implements machine.Stepper.
func (m *Machine) TimerDeadline() (uint64, bool) {
	return m.dev.Timer.Deadline, m.dev.Timer.Period != 0
}

// PollTimers implements machine.Stepper: a due periodic timer raises its
// line once, however many periods passed (as a PIT's missed ticks
// coalesce), and its next deadline is the first period boundary after now.
func (m *Machine) PollTimers(now uint64) {
	t := &m.dev.Timer
	if t.Period == 0 || now < t.Deadline {
		return
	}
	m.dev.PIC.raise(IRQTimer)
	t.Deadline += ((now-t.Deadline)/t.Period + 1) * t.Period
}

// DeliverFrame implements machine.Stepper (see netDevice).
func (m *Machine) DeliverFrame(frame []byte) { m.netReceive(frame) }

// read64 reads guest RAM at addr, which must be inside it.
func (m *Machine) read64(addr uint64) uint64 {
	return binary.LittleEndian.Uint64(m.mem[addr:])
}

// write64 writes guest RAM at addr, which must be inside it.
func (m *Machine) write64(addr, v uint64) {
	binary.LittleEndian.PutUint64(m.mem[addr:], v)
	m.markWrite(addr, 8)
}

// writeRAM copies p to guest RAM at addr; the range must be inside it.
func (m *Machine) writeRAM(addr uint64, p []byte) {
	copy(m.mem[addr:], p)
	m.markWrite(addr, uint64(len(p)))
}

// inRAM reports whether [addr, addr+n) lies in RAM.
func (m *Machine) inRAM(addr, n uint64) bool {
	size := uint64(len(m.mem))
	return n <= size && addr <= size-n
}
