package vmm

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
)

// The legacy virtio-PCI transport (virtio 0.9.5) on BAR0, an I/O BAR, as
// guests/lib/virtio.c and Linux's virtio_pci_legacy drive it. No MSI-X, so
// the device configuration starts at 0x14.
const (
	virtioRegHostFeatures  = 0x00 // 32, R
	virtioRegGuestFeatures = 0x04 // 32, RW
	virtioRegQueuePFN      = 0x08 // 32, RW
	virtioRegQueueNum      = 0x0c // 16, R
	virtioRegQueueSel      = 0x0e // 16, RW
	virtioRegQueueNotify   = 0x10 // 16, W
	virtioRegStatus        = 0x12 // 8, RW
	virtioRegISR           = 0x13 // 8, R, read clears
	virtioRegConfig        = 0x14

	// VirtioIOSize is the size of each virtio device's I/O BAR.
	VirtioIOSize = 0x100

	virtioStatusAcknowledge = 1
	virtioStatusDriver      = 2
	virtioStatusDriverOK    = 4
	virtioStatusNeedsReset  = 0x40
	virtioStatusFailed      = 0x80

	virtioISRQueue = 1

	virtioMaxQueues = 2

	// virtioQueueSize is the size of every queue the devices offer (the
	// guests' driver accepts up to 1024).
	virtioQueueSize = 256
)

// virtioState is the transport's plain-data state.
type virtioState struct {
	HostFeatures  uint32
	GuestFeatures uint32
	Status        uint8
	ISR           uint8
	QueueSel      uint16
	Queues        [virtioMaxQueues]vqState
}

// virtioFunc is the device-specific half of a virtio device. The transport
// calls it with its mutex held.
type virtioFunc interface {
	// configLocked returns the device configuration space as the guest
	// reads it.
	configLocked() []byte
	// notifyLocked handles a notify of queue q (a valid, set-up queue).
	notifyLocked(q int)
	// driverOKLocked runs when the driver sets DRIVER_OK.
	driverOKLocked()
}

// virtioCore is the transport half of a virtio device: the registers, the
// queues, the interrupt status, and the device's mutex and quiesced flag.
//
// mu protects st and quiesced and serialises everything the device does to
// guest memory: PIO from vCPU threads, Poll from a backend goroutine or
// whoever calls it.
type virtioCore struct {
	id  string
	mem *GuestMemory
	// irq drives the device's INTx line (level: high while ISR != 0); nil
	// when the machine has no interrupt controller to drive (guests poll).
	irq func(level bool)
	fn  virtioFunc

	mu       sync.Mutex
	st       virtioState
	quiesced bool
}

func (c *virtioCore) init(id string, mem *GuestMemory, irq func(bool), fn virtioFunc, features uint32, queues int) {
	c.id, c.mem, c.irq, c.fn = id, mem, irq, fn
	c.st.HostFeatures = features
	for i := 0; i < queues; i++ {
		c.st.Queues[i].Size = virtioQueueSize
	}
}

func (c *virtioCore) queue(i int) vring { return vring{mem: c.mem, q: &c.st.Queues[i]} }

// usableLocked says whether queue i may be processed: it exists, is set up,
// and the device is not waiting for a reset.
func (c *virtioCore) usableLocked(i int) bool {
	return i >= 0 && i < virtioMaxQueues && c.st.Queues[i].Size != 0 && c.st.Queues[i].PFN != 0 &&
		c.st.Status&(virtioStatusNeedsReset|virtioStatusFailed) == 0
}

// brokenLocked records that the driver broke the protocol: the device sets
// NEEDS_RESET and ignores its queues until the driver resets it.
func (c *virtioCore) brokenLocked(err error) {
	if c.st.Status&virtioStatusNeedsReset == 0 {
		slog.Warn("virtio device needs a reset: the driver broke the ring protocol", "device", c.id, "err", err)
	}
	c.st.Status |= virtioStatusNeedsReset
}

// interruptLocked signals used buffers unless the driver asked for none.
func (c *virtioCore) interruptLocked(availFlags uint16) {
	if availFlags&vringAvailFNoInterrupt != 0 {
		return
	}
	c.st.ISR |= virtioISRQueue
	if c.irq != nil {
		c.irq(true)
	}
}

func (c *virtioCore) resetLocked() {
	wasISR := c.st.ISR
	st := virtioState{HostFeatures: c.st.HostFeatures}
	for i := range st.Queues {
		st.Queues[i].Size = c.st.Queues[i].Size
	}
	c.st = st
	if wasISR != 0 && c.irq != nil {
		c.irq(false)
	}
}

// PIORead implements PIODevice for the device's I/O BAR.
func (c *virtioCore) PIORead(port uint16, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	off := int(port) % VirtioIOSize
	var regs [virtioRegConfig]byte
	binary.LittleEndian.PutUint32(regs[virtioRegHostFeatures:], c.st.HostFeatures)
	binary.LittleEndian.PutUint32(regs[virtioRegGuestFeatures:], c.st.GuestFeatures)
	if sel := int(c.st.QueueSel); sel < virtioMaxQueues {
		binary.LittleEndian.PutUint32(regs[virtioRegQueuePFN:], c.st.Queues[sel].PFN)
		binary.LittleEndian.PutUint16(regs[virtioRegQueueNum:], c.st.Queues[sel].Size)
	}
	binary.LittleEndian.PutUint16(regs[virtioRegQueueSel:], c.st.QueueSel)
	regs[virtioRegStatus] = c.st.Status
	regs[virtioRegISR] = c.st.ISR
	cfg := c.fn.configLocked()
	for i := range data {
		switch o := off + i; {
		case o < virtioRegConfig:
			data[i] = regs[o]
		case o-virtioRegConfig < len(cfg):
			data[i] = cfg[o-virtioRegConfig]
		default:
			data[i] = 0xff
		}
	}
	if off <= virtioRegISR && virtioRegISR < off+len(data) && c.st.ISR != 0 {
		c.st.ISR = 0
		if c.irq != nil {
			c.irq(false)
		}
	}
}

// PIOWrite implements PIODevice for the device's I/O BAR. Writes of a width
// other than the register's, and writes to read-only registers or the
// device configuration, are ignored.
func (c *virtioCore) PIOWrite(port uint16, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var v uint32
	for i := len(data) - 1; i >= 0; i-- {
		v = v<<8 | uint32(data[i])
	}
	switch off := int(port) % VirtioIOSize; {
	case off == virtioRegGuestFeatures && len(data) == 4:
		c.st.GuestFeatures = v & c.st.HostFeatures
	case off == virtioRegQueuePFN && len(data) == 4:
		c.setPFNLocked(v)
	case off == virtioRegQueueSel && len(data) == 2:
		c.st.QueueSel = uint16(v)
	case off == virtioRegQueueNotify && len(data) == 2:
		if c.usableLocked(int(v)) {
			c.fn.notifyLocked(int(v))
		}
	case off == virtioRegStatus && len(data) == 1:
		if v == 0 {
			c.resetLocked()
			return
		}
		was := c.st.Status
		c.st.Status = uint8(v) | was&virtioStatusNeedsReset
		if was&virtioStatusDriverOK == 0 && v&virtioStatusDriverOK != 0 {
			c.fn.driverOKLocked()
		}
	default:
		slog.Debug("virtio: ignored register write", "device", c.id, "offset", off, "size", len(data))
	}
}

// setPFNLocked sets up (or, with 0, tears down) the selected queue.
func (c *virtioCore) setPFNLocked(pfn uint32) {
	sel := int(c.st.QueueSel)
	if sel >= virtioMaxQueues || c.st.Queues[sel].Size == 0 {
		return
	}
	q := &c.st.Queues[sel]
	*q = vqState{Size: q.Size, PFN: pfn}
	if pfn == 0 {
		return
	}
	if err := c.queue(sel).checkPlacement(); err != nil {
		q.PFN = 0
		c.brokenLocked(err)
	}
}

// quiesce is the devices' Quiesce: it waits out any delivery in progress
// and stops asynchronous deliveries (Poll) until Wake.
func (c *virtioCore) quiesce() {
	c.mu.Lock()
	c.quiesced = true
	c.mu.Unlock()
}

// wakeLocked lets Poll work again and re-asserts the interrupt line if an
// interrupt is pending (after a restore, the line follows ISR).
func (c *virtioCore) wakeLocked() {
	c.quiesced = false
	if c.st.ISR != 0 && c.irq != nil {
		c.irq(true)
	}
}

// checkRestore validates a transport state against the device's fixed
// shape before it is installed.
func (c *virtioCore) checkRestore(st *virtioState) error {
	if st.HostFeatures != c.st.HostFeatures {
		return fmt.Errorf("%s: saved host features %#x, this device offers %#x: %w", c.id, st.HostFeatures, c.st.HostFeatures, ErrMismatch)
	}
	if st.GuestFeatures&^st.HostFeatures != 0 {
		return fmt.Errorf("%s: guest features %#x beyond the host's %#x: %w", c.id, st.GuestFeatures, st.HostFeatures, ErrMismatch)
	}
	for i := range st.Queues {
		q := &st.Queues[i]
		if q.Size != c.st.Queues[i].Size {
			return fmt.Errorf("%s: queue %d has %d entries, this device %d: %w", c.id, i, q.Size, c.st.Queues[i].Size, ErrMismatch)
		}
		if q.PFN != 0 {
			if err := (vring{mem: c.mem, q: q}).checkPlacement(); err != nil {
				return fmt.Errorf("%s: queue %d: %w: %w", c.id, i, ErrMismatch, err)
			}
		}
		if q.Size == 0 && (q.PFN != 0 || q.LastAvail != 0 || q.UsedIdx != 0) {
			return fmt.Errorf("%s: queue %d does not exist but has state: %w", c.id, i, ErrMismatch)
		}
	}
	return nil
}
