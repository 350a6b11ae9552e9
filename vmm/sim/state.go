package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The state encoding: stateMagic, a little-endian uint16 version, the
// fixed-size savedState in encoding/binary's little-endian layout, and a
// CRC-32C of everything before it.
const (
	stateMagic   = "SIMV"
	stateVersion = 1
)

var (
	stateBodySize = binary.Size(savedState{})
	stateSize     = len(stateMagic) + 2 + stateBodySize + 4
	castagnoli    = crc32.MakeTable(crc32.Castagnoli)
)

// savedState is the whole machine but RAM (and but the host-side kick,
// breakpoint resume and instruction count), as plain data.
type savedState struct {
	MemPages  uint64 // must match the machine restored into
	R         [16]uint64
	PC        uint64
	Flags     uint64
	CPUBits   uint8 // cpuShadow | cpuHalted | cpuWindowReq | cpuOff
	OffStatus uint8
	PendKind  uint8
	PendSize  uint8
	PendReg   uint8
	PendAddr  uint64
	PendData  uint64
	PIC       pic
	Timer     timer
	ClockHi   uint32
	Disk      disk
	Net       nic
}

const (
	cpuShadow = 1 << iota
	cpuHalted
	cpuWindowReq
	cpuOff
	cpuBitsKnown = cpuShadow | cpuHalted | cpuWindowReq | cpuOff
)

// SaveState implements machine.Stepper.
func (m *Machine) SaveState() ([]byte, error) {
	s := m.saved()
	return s.encode(), nil
}

func (m *Machine) saved() savedState {
	c := &m.cpu
	s := savedState{
		MemPages: uint64(len(m.mem) / PageSize), PC: c.PC, Flags: c.Flags, OffStatus: c.OffStatus,
		PendKind: uint8(c.Pend.Kind), PendSize: c.Pend.Size, PendReg: c.Pend.Reg,
		PendAddr: c.Pend.Addr, PendData: c.Pend.Data,
		PIC: m.dev.PIC, Timer: m.dev.Timer, ClockHi: m.dev.Clock.LatchedHi, Disk: m.dev.Disk, Net: m.dev.Net,
	}
	copy(s.R[:], c.R[:16])
	for _, f := range []struct {
		on  bool
		bit uint8
	}{{c.Shadow, cpuShadow}, {c.Halted, cpuHalted}, {c.WindowReq, cpuWindowReq}, {c.Off, cpuOff}} {
		if f.on {
			s.CPUBits |= f.bit
		}
	}
	return s
}

// encode frames s: magic, version, body, checksum.
func (s *savedState) encode() []byte {
	b := make([]byte, 0, stateSize)
	b = append(b, stateMagic...)
	b = binary.LittleEndian.AppendUint16(b, stateVersion)
	b, err := binary.Append(b, binary.LittleEndian, s)
	if err != nil {
		panic(fmt.Sprintf("encoding a fixed-size state: %v", err)) // savedState has only fixed-size fields
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// RestoreState implements machine.Stepper. It verifies the whole encoding
// (magic, version, size, checksum, and that every field is one SaveState
// can produce for this machine's RAM size) before changing anything, and
// starts a new Mark interval.
func (m *Machine) RestoreState(state []byte) error {
	s, err := decodeState(state)
	if err == nil {
		err = s.check(uint64(len(m.mem)))
	}
	if err != nil {
		return fmt.Errorf("restoring the machine state: %w", err)
	}
	bits := s.CPUBits
	m.cpu = cpu{
		PC: s.PC, Flags: s.Flags, OffStatus: s.OffStatus,
		Shadow: bits&cpuShadow != 0, Halted: bits&cpuHalted != 0, WindowReq: bits&cpuWindowReq != 0, Off: bits&cpuOff != 0,
		Pend: access{Kind: machine.ExitKind(s.PendKind), Addr: s.PendAddr, Size: s.PendSize, Reg: s.PendReg, Data: s.PendData},
	}
	copy(m.cpu.R[:], s.R[:])
	m.dev = devices{PIC: s.PIC, Timer: s.Timer, Disk: s.Disk, Net: s.Net}
	m.dev.Clock.LatchedHi = s.ClockHi
	m.resumeSet = false
	clear(m.dirty)
	return nil
}

// decodeState checks the framing of state and decodes its body.
func decodeState(state []byte) (savedState, error) {
	var s savedState
	switch {
	case len(state) < len(stateMagic)+2:
		return s, fmt.Errorf("%d bytes: too short for a header", len(state))
	case string(state[:len(stateMagic)]) != stateMagic:
		return s, fmt.Errorf("bad magic %q", state[:len(stateMagic)])
	}
	if v := binary.LittleEndian.Uint16(state[len(stateMagic):]); v != stateVersion {
		return s, fmt.Errorf("state version %d: this machine reads version %d", v, stateVersion)
	}
	if len(state) != stateSize {
		return s, fmt.Errorf("%d bytes: version %d state is %d", len(state), stateVersion, stateSize)
	}
	body := state[:len(state)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(state[len(body):]); got != want {
		return s, fmt.Errorf("checksum %#08x, expected %#08x: corrupt", got, want)
	}
	_, err := binary.Decode(body[len(stateMagic)+2:], binary.LittleEndian, &s)
	return s, err
}

// check verifies that s is a state SaveState produces on a machine with
// memSize bytes of RAM.
func (s *savedState) check(memSize uint64) error {
	kind := machine.ExitKind(s.PendKind)
	pending := kind != 0
	off := s.CPUBits&cpuOff != 0
	switch {
	case s.MemPages != memSize/PageSize:
		return fmt.Errorf("state of a machine with %d pages of RAM, this one has %d", s.MemPages, memSize/PageSize)
	case s.Flags&^flagsKnown != 0:
		return fmt.Errorf("flags %#x: unknown bits", s.Flags)
	case s.CPUBits&^cpuBitsKnown != 0:
		return fmt.Errorf("vCPU bits %#x: unknown bits", s.CPUBits)
	case !off && s.OffStatus != 0:
		return errors.New("a power-off status on a machine that is on")
	case off && (pending || s.CPUBits&cpuHalted != 0):
		return errors.New("a machine that is off has a pending access or is halted")
	case pending && s.CPUBits&cpuHalted != 0:
		return errors.New("a halted vCPU with a pending access")
	case s.Timer.Period == 0 && s.Timer.Deadline != 0, s.Timer.Period != 0 && s.Timer.Period < TimerMinPeriod:
		return fmt.Errorf("timer period %d, deadline %d", s.Timer.Period, s.Timer.Deadline)
	case s.Disk.Status != DiskOK && s.Disk.Status != DiskBadRequest:
		return fmt.Errorf("disk status %d", s.Disk.Status)
	case s.Net.RxSlots > NetMaxSlots:
		return fmt.Errorf("%d receive slots", s.Net.RxSlots)
	}
	if !pending {
		if s.PendSize != 0 || s.PendReg != 0 || s.PendAddr != 0 || s.PendData != 0 {
			return errors.New("fields of a pending access without one")
		}
		return nil
	}
	size := s.PendSize
	switch {
	case !kind.IsIO():
		return fmt.Errorf("pending access of kind %v", kind)
	case size != 1 && size != 2 && size != 4 && (size != 8 || kind == machine.ExitPIORead || kind == machine.ExitPIOWrite):
		return fmt.Errorf("pending %v of %d bytes", kind, size)
	case (kind == machine.ExitPIORead || kind == machine.ExitPIOWrite) && s.PendAddr > 0xffff:
		return fmt.Errorf("pending %v at port %#x", kind, s.PendAddr)
	case (kind == machine.ExitMMIORead || kind == machine.ExitMMIOWrite) && s.PendAddr < memSize:
		return fmt.Errorf("pending %v at %#x, inside RAM", kind, s.PendAddr)
	case kind.IsRead() && (s.PendReg > 15 || s.PendData != 0):
		return fmt.Errorf("pending %v into r%d with data", kind, s.PendReg)
	case !kind.IsRead() && (s.PendReg != 0 || s.PendData&^sizeMask(size) != 0):
		return fmt.Errorf("pending %v with a register or %#x wider than %d bytes", kind, s.PendData, size)
	}
	return nil
}
