package sim

import (
	"encoding/binary"
	"fmt"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Ports. Each register answers at its own port to any access size; a write
// takes the low Size bytes, a read is zero-extended. Other ports read as
// all ones and ignore writes, as on a PC.
const (
	PortPICPending = 0x20  // inb: the pending lines, bit n for line n
	PortPICMask    = 0x21  // outb, inb: the masked lines (1 = masked); all unmasked at reset
	PortConsole    = 0x3f8 // outb: one byte to Env.Console
	PortPower      = 0x501 // outb status: power off (Complete returns ErrPowerOff)
	PortClockLo    = 0x520 // inl: latch Env.Now and return its low half
	PortClockHi    = 0x524 // inl: the latched time's high half
	PortTimer      = 0x540 // outl: periodic timer period in ns (0 stops it); inl: the period
	PortDiskAddr   = 0x560 // outl: guest-physical address of the transfer buffer
	PortDiskSector = 0x564 // outl: first sector (DiskSectorSize bytes each)
	PortDiskCount  = 0x568 // outl: sectors, 1 to DiskMaxSectors
	PortDiskCmd    = 0x56c // outb: DiskRead, DiskWrite or DiskFlush, performed at once; inb: DiskStatus of the last one
)

// Interrupt lines; line n is vector n.
const (
	IRQTimer = 0
	IRQNet   = 1
)

// The periodic timer: a PIT-like device counting in guest nanoseconds.
// Writing a period p arms it for Env.Now()+p, then every p; a period below
// TimerMinPeriod is taken as TimerMinPeriod.
const TimerMinPeriod = 10_000

// The disk: synchronous DMA of whole sectors through Env.ReadDisk and
// Env.WriteDisk, at byte offset sector*DiskSectorSize.
const (
	DiskSectorSize = 512
	DiskMaxSectors = 256
	DiskRead       = 1
	DiskWrite      = 2
	DiskFlush      = 3 // every earlier write durable (Env.FlushDisk) before the OUT completes
	// DiskStatus values.
	DiskOK         = 0
	DiskBadRequest = 1 // unknown command, count out of range, buffer outside RAM
)

// The network device's registers, at MMIOBase + offset; 8 bytes wide,
// accessed at these offsets with any size. Other offsets read as all ones.
//
// Receive: the guest hands the device NetRxSlots slots of NetSlotSize
// bytes from NetRxBase, a ring. NetRxHead counts the frames the device
// wrote, NetRxTail the slots the guest posted (both free-running); frame
// number h goes to slot h % slots, as a little-endian uint32 length at
// +0 and the frame at +NetSlotData. The device writes while head < tail,
// raises IRQNet per frame, and otherwise drops the frame (counted in
// NetRxDrops), as does a frame above NetMaxFrame bytes or a slot outside
// RAM.
//
// Transmit: writing NetTxSend sends the NetTxLen bytes at NetTxAddr through
// Env.SendFrame during Complete; a length of 0 or above NetMaxFrame, or a
// range outside RAM, is counted in NetTxErrors instead.
const (
	NetRxBase   = 0x00
	NetRxSlots  = 0x08 // at most NetMaxSlots: larger writes are taken as NetMaxSlots
	NetRxHead   = 0x10 // read-only
	NetRxTail   = 0x18
	NetRxDrops  = 0x20 // read-only
	NetTxAddr   = 0x28
	NetTxLen    = 0x30
	NetTxSend   = 0x38 // write-only
	NetTxErrors = 0x40 // read-only
	netRegsEnd  = 0x48

	NetSlotSize = 2048
	NetSlotData = 8
	NetMaxFrame = NetSlotSize - NetSlotData
	NetMaxSlots = 4096
)

// devices is the state of every device, plain data.
type devices struct {
	PIC   pic
	Timer timer
	Clock struct{ LatchedHi uint32 }
	Disk  disk
	Net   nic
}

// pic is the interrupt controller: edge-triggered lines, acknowledged when
// delivered; the lowest unmasked pending line goes first.
type pic struct {
	Pending uint8
	Mask    uint8
}

func (p *pic) raise(line int) { p.Pending |= 1 << line }
func (p *pic) ack(line int)   { p.Pending &^= 1 << line }

// next returns the line to deliver, if any.
func (p *pic) next() (int, bool) {
	lines := p.Pending &^ p.Mask
	for i := range NumVectors {
		if lines&(1<<i) != 0 {
			return i, true
		}
	}
	return 0, false
}

type timer struct {
	Period   uint64 // 0: stopped
	Deadline uint64
}

type disk struct {
	Addr, Sector, Count uint32
	Status              uint8
}

type nic struct {
	RxBase, RxSlots, RxHead, RxTail, RxDrops uint64
	TxAddr, TxLen, TxErrors                  uint64
}

// pioRead performs an IN.
func (m *Machine) pioRead(port uint16, size uint8) (uint64, error) {
	d := &m.dev
	switch port {
	case PortPICPending:
		return uint64(d.PIC.Pending), nil
	case PortPICMask:
		return uint64(d.PIC.Mask), nil
	case PortClockLo:
		now := m.env.Now()
		d.Clock.LatchedHi = uint32(now >> 32)
		return now & 0xffffffff, nil
	case PortClockHi:
		return uint64(d.Clock.LatchedHi), nil
	case PortTimer:
		return d.Timer.Period, nil
	case PortDiskAddr:
		return uint64(d.Disk.Addr), nil
	case PortDiskSector:
		return uint64(d.Disk.Sector), nil
	case PortDiskCount:
		return uint64(d.Disk.Count), nil
	case PortDiskCmd:
		return uint64(d.Disk.Status), nil
	}
	return sizeMask(size), nil
}

// pioWrite performs an OUT of v.
func (m *Machine) pioWrite(port uint16, size uint8, v uint64) error {
	d := &m.dev
	switch port {
	case PortPICMask:
		d.PIC.Mask = uint8(v)
	case PortConsole:
		m.env.Console([]byte{byte(v)})
	case PortPower:
		m.cpu.Off, m.cpu.OffStatus = true, uint8(v)
		return fmt.Errorf("%w (status %d)", machine.ErrPowerOff, uint8(v))
	case PortTimer:
		d.Timer = timer{}
		if v != 0 {
			d.Timer.Period = max(v, TimerMinPeriod)
			d.Timer.Deadline = m.env.Now() + d.Timer.Period
		}
	case PortDiskAddr:
		d.Disk.Addr = uint32(v)
	case PortDiskSector:
		d.Disk.Sector = uint32(v)
	case PortDiskCount:
		d.Disk.Count = uint32(v)
	case PortDiskCmd:
		return m.diskCommand(uint8(v))
	}
	return nil
}

// diskCommand performs a disk transfer. Env errors are returned (fatal);
// a bad request only sets the status.
func (m *Machine) diskCommand(cmd uint8) error {
	d := &m.dev.Disk
	if cmd == DiskFlush {
		d.Status = DiskOK
		if err := m.env.FlushDisk(); err != nil {
			return fmt.Errorf("disk flush: %w", err)
		}
		return nil
	}
	addr, n := uint64(d.Addr), uint64(d.Count)*DiskSectorSize
	off := int64(d.Sector) * DiskSectorSize
	if cmd != DiskRead && cmd != DiskWrite || d.Count == 0 || d.Count > DiskMaxSectors || !m.inRAM(addr, n) {
		d.Status = DiskBadRequest
		return nil
	}
	d.Status = DiskOK
	buf := m.mem[addr : addr+n]
	if cmd == DiskWrite {
		if err := m.env.WriteDisk(buf, off); err != nil {
			return fmt.Errorf("disk write of %d bytes at %d: %w", n, off, err)
		}
		return nil
	}
	m.markWrite(addr, n)
	if err := m.env.ReadDisk(buf, off); err != nil {
		return fmt.Errorf("disk read of %d bytes at %d: %w", n, off, err)
	}
	return nil
}

// mmioRead performs a load from an unbacked address.
func (m *Machine) mmioRead(addr uint64, size uint8) (uint64, error) {
	n := &m.dev.Net
	if addr < MMIOBase || addr >= MMIOBase+netRegsEnd {
		return sizeMask(size), nil
	}
	switch addr - MMIOBase {
	case NetRxBase:
		return n.RxBase, nil
	case NetRxSlots:
		return n.RxSlots, nil
	case NetRxHead:
		return n.RxHead, nil
	case NetRxTail:
		return n.RxTail, nil
	case NetRxDrops:
		return n.RxDrops, nil
	case NetTxAddr:
		return n.TxAddr, nil
	case NetTxLen:
		return n.TxLen, nil
	case NetTxErrors:
		return n.TxErrors, nil
	}
	return sizeMask(size), nil
}

// mmioWrite performs a store to an unbacked address.
func (m *Machine) mmioWrite(addr uint64, _ uint8, v uint64) error {
	n := &m.dev.Net
	if addr < MMIOBase || addr >= MMIOBase+netRegsEnd {
		return nil
	}
	switch addr - MMIOBase {
	case NetRxBase:
		n.RxBase = v
	case NetRxSlots:
		n.RxSlots = min(v, NetMaxSlots)
	case NetRxTail:
		n.RxTail = v
	case NetTxAddr:
		n.TxAddr = v
	case NetTxLen:
		n.TxLen = v
	case NetTxSend:
		if n.TxLen == 0 || n.TxLen > NetMaxFrame || !m.inRAM(n.TxAddr, n.TxLen) {
			n.TxErrors++
			return nil
		}
		if err := m.env.SendFrame(m.mem[n.TxAddr : n.TxAddr+n.TxLen]); err != nil {
			return fmt.Errorf("sending a %d-byte frame: %w", n.TxLen, err)
		}
	}
	return nil
}

// netReceive writes frame into the next posted receive slot and raises
// IRQNet, or drops it.
func (m *Machine) netReceive(frame []byte) {
	n := &m.dev.Net
	if len(frame) > NetMaxFrame || n.RxSlots == 0 || n.RxHead >= n.RxTail {
		n.RxDrops++
		return
	}
	slot := n.RxBase + n.RxHead%n.RxSlots*NetSlotSize
	if slot < n.RxBase || !m.inRAM(slot, NetSlotData+uint64(len(frame))) {
		n.RxDrops++
		return
	}
	var hdr [NetSlotData]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(len(frame)))
	m.writeRAM(slot, hdr[:])
	m.writeRAM(slot+NetSlotData, frame)
	n.RxHead++
	m.dev.PIC.raise(IRQNet)
}
