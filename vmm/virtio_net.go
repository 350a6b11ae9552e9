package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
)

// virtio-net (legacy): receive queue 0, transmit queue 1, each buffer
// preceded by the 10-byte struct virtio_net_hdr (no MRG_RXBUF, no offloads,
// so the device writes it zeroed and ignores the driver's).
const (
	virtioNetFMAC    = 1 << 5
	virtioNetFStatus = 1 << 16

	virtioNetHdrLen = 10
	virtioNetRXQ    = 0
	virtioNetTXQ    = 1

	virtioNetLinkUp = 1
)

// DefaultGuestMAC is the guest's MAC address when none is configured.
var DefaultGuestMAC = [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// NetStats counts what a VirtioNet did with frames. They are host
// statistics, not guest state: they are not saved.
type NetStats struct {
	TxFrames, TxDropped, TxRefused uint64 // sent; dropped (malformed, oversize, sink error); ErrOutputFull retries
	RxFrames, RxDropped            uint64 // delivered; dropped (queue full, oversize, too big for the posted buffer)
}

// netState is VirtioNet's plain-data state.
type netState struct {
	Core virtioState
	MAC  [6]byte
}

// VirtioNet is a legacy virtio network device. The guest's transmitted
// frames go to one FrameSink; received frames wait in a bounded host queue
// until Poll (or a queue notify) copies them into posted buffers.
//
// Every request is handled entirely within one call (a notify or a Poll), so
// no request is half-done when the machine is saved.
type VirtioNet struct {
	virtioCore
	mac  [6]byte
	sink FrameSink
	rx   frameQueue

	// Scratch buffers; mu (in virtioCore) protects them.
	segs []vseg
	buf  []byte

	txFrames, txDropped, txRefused, rxFrames, rxDropped atomic.Uint64
}

// NewVirtioNet makes a virtio-net device over mem. irq may be nil (the guest
// polls); rxBacklog bounds the host queue of received frames.
func NewVirtioNet(id string, mem *GuestMemory, mac [6]byte, sink FrameSink, irq func(bool), rxBacklog int) *VirtioNet {
	n := &VirtioNet{mac: mac, sink: sink}
	n.rx.max = rxBacklog
	n.init("virtio-net/"+id, mem, irq, n, virtioNetFMAC|virtioNetFStatus, 2)
	return n
}

// MAC returns the device's MAC address.
func (n *VirtioNet) MAC() [6]byte { return n.mac }

// Stats returns the frame counters.
func (n *VirtioNet) Stats() NetStats {
	return NetStats{
		TxFrames: n.txFrames.Load(), TxDropped: n.txDropped.Load(), TxRefused: n.txRefused.Load(),
		RxFrames: n.rxFrames.Load(), RxDropped: n.rxDropped.Load(),
	}
}

func (n *VirtioNet) configLocked() []byte {
	var c [8]byte
	copy(c[:], n.mac[:])
	binary.LittleEndian.PutUint16(c[6:], virtioNetLinkUp)
	return c[:]
}

func (n *VirtioNet) notifyLocked(q int) {
	if q == virtioNetTXQ {
		n.transmitLocked()
	}
	n.deliverLocked()
}

func (n *VirtioNet) driverOKLocked() { n.deliverLocked() }

// Receive implements RxPort.
func (n *VirtioNet) Receive(frame []byte) bool {
	if len(frame) > MaxFrame || len(frame) < minFrame || !n.rx.push(frame) {
		n.rxDropped.Add(1)
		return false
	}
	return true
}

// Poll implements RxPort: it retries transmits a sink refused and delivers
// waiting frames. It does nothing while the device is quiesced. Safe to call
// from any goroutine (a backend's, a vCPU thread in replay).
func (n *VirtioNet) Poll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.quiesced {
		return
	}
	if n.usableLocked(virtioNetTXQ) {
		n.transmitLocked()
	}
	n.deliverLocked()
}

var _ Device = (*VirtioNet)(nil)

// Quiesce implements Quiescer: it waits out a delivery in progress and
// stops Poll (a backend's receive goroutine) until Wake.
func (n *VirtioNet) Quiesce() { n.quiesce() }

// Wake implements Quiescer.
func (n *VirtioNet) Wake() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.wakeLocked()
	if n.usableLocked(virtioNetTXQ) {
		n.transmitLocked()
	}
	n.deliverLocked()
}

// transmitLocked sends every available transmit chain to the sink, until
// the ring is empty or the sink is full.
func (n *VirtioNet) transmitLocked() {
	r := n.queue(virtioNetTXQ)
	flags, pending, err := r.avail()
	if err != nil {
		n.brokenLocked(err)
		return
	}
	done := false
requests:
	for ; pending > 0; pending-- {
		head, segs, err := r.next(n.segs[:0], 1<<20)
		n.segs = segs
		if err != nil {
			n.brokenLocked(err)
			break
		}
		readable, writable := segsLen(n.segs)
		var frame []byte
		switch {
		case writable != 0 || readable < virtioNetHdrLen+minFrame || readable > virtioNetHdrLen+MaxFrame:
			slog.Debug("virtio-net: dropping a malformed transmit request", "readable", readable, "writable", writable)
		default:
			n.buf = growBuf(n.buf, int(readable))
			if err := gather(n.mem, n.segs, n.buf); err != nil {
				n.brokenLocked(err)
				break requests
			}
			frame = n.buf[virtioNetHdrLen:]
		}
		if frame == nil {
			n.txDropped.Add(1)
		} else if err := n.sink.SendFrame(frame); errors.Is(err, ErrOutputFull) {
			n.txRefused.Add(1)
			break // unconsumed: retried on the next notify or Poll
		} else if err != nil {
			slog.Debug("virtio-net: the sink dropped a frame", "err", err)
			n.txDropped.Add(1)
		} else {
			n.txFrames.Add(1)
		}
		if err := r.push(head, 0); err != nil {
			n.brokenLocked(err)
			break
		}
		done = true
	}
	if done {
		n.interruptLocked(flags)
	}
}

// deliverLocked copies waiting frames into posted receive buffers, each
// after a zeroed virtio_net_hdr. A frame that does not fit the buffer at the
// head of the ring is dropped; with no buffer posted, frames wait.
func (n *VirtioNet) deliverLocked() {
	if n.quiesced || n.st.Status&virtioStatusDriverOK == 0 || !n.usableLocked(virtioNetRXQ) {
		return
	}
	r := n.queue(virtioNetRXQ)
	flags, pending, err := r.avail()
	if err != nil {
		n.brokenLocked(err)
		return
	}
	var hdr [virtioNetHdrLen]byte
	done := false
	for pending > 0 {
		frame := n.rx.peek()
		if frame == nil {
			break
		}
		head, segs, err := r.next(n.segs[:0], 1<<20)
		n.segs = segs
		if err != nil {
			n.brokenLocked(err)
			break
		}
		readable, writable := segsLen(n.segs)
		if readable != 0 {
			n.brokenLocked(fmt.Errorf("%w: receive chain %d has device-readable buffers", errBadChain, head))
			break
		}
		if writable < uint64(virtioNetHdrLen+len(frame)) {
			n.rx.pop()
			n.rxDropped.Add(1) // the buffer stays posted for the next frame
			continue
		}
		if err := scatter(n.mem, n.segs, 0, hdr[:]); err != nil {
			n.brokenLocked(err)
			break
		}
		if err := scatter(n.mem, n.segs, virtioNetHdrLen, frame); err != nil {
			n.brokenLocked(err)
			break
		}
		// Only once copied: pop gives the frame's buffer to the next
		// frame a backend pushes, from its own goroutine.
		n.rx.pop()
		if err := r.push(head, uint32(virtioNetHdrLen+len(frame))); err != nil {
			n.brokenLocked(err)
			break
		}
		n.rxFrames.Add(1)
		pending--
		done = true
	}
	if done {
		n.interruptLocked(flags)
	}
}

func growBuf(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// ID implements Component.
func (n *VirtioNet) ID() string { return n.id }

// StateVersion implements Component.
func (n *VirtioNet) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (n *VirtioNet) SaveState() ([]byte, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return encodePlain(&netState{Core: n.st, MAC: n.mac})
}

// RestoreState implements Component. The MAC must be the device's own: it
// is configuration, and a different one would confuse the network.
func (n *VirtioNet) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(n.ID(), version, n.StateVersion()); err != nil {
		return err
	}
	var st netState
	if err := decodePlain(data, &st); err != nil {
		return fmt.Errorf("%s: %w", n.ID(), err)
	}
	if st.MAC != n.mac {
		return fmt.Errorf("%s: saved MAC %x, this device has %x: %w", n.ID(), st.MAC, n.mac, ErrMismatch)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.checkRestore(&st.Core); err != nil {
		return err
	}
	n.st = st.Core
	return nil
}
