package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
)

// virtio-blk (legacy): one request queue; each request is a 16-byte header
// (type, ioprio, sector), data, and a status byte the device writes last.
const (
	virtioBlkFSegMax = 1 << 2
	virtioBlkFRO     = 1 << 5
	virtioBlkFFlush  = 1 << 9

	virtioBlkTIn    = 0
	virtioBlkTOut   = 1
	virtioBlkTFlush = 4
	virtioBlkTGetID = 8

	virtioBlkSOK     = 0
	virtioBlkSIOErr  = 1
	virtioBlkSUnsupp = 2

	virtioBlkHdrLen = 16
	virtioBlkIDLen  = 20

	sectorSize = 512

	// maxBlkData bounds one request's data; larger requests get IOERR.
	maxBlkData = 4 << 20
)

// BlkStats counts what a VirtioBlk did. Host statistics, not saved.
type BlkStats struct {
	Reads, Writes, Flushes, Errors, Refused uint64
}

// blkState is VirtioBlk's plain-data state.
type blkState struct {
	Core virtioState
	// Capacity is the disk size in sectors: a restore refuses another disk.
	Capacity uint64
}

// VirtioBlk is a legacy virtio block device over a Disk. Every request is
// handled entirely within one notify or Poll.
type VirtioBlk struct {
	virtioCore
	disk   Disk
	serial [virtioBlkIDLen]byte

	// Scratch; mu protects it.
	segs  []vseg
	buf   []byte
	stats BlkStats
}

// NewVirtioBlk makes a virtio-blk device over disk; serial is what GET_ID
// returns (at most 20 bytes are used). irq may be nil (the guest polls).
func NewVirtioBlk(id string, mem *GuestMemory, disk Disk, readOnly bool, serial string, irq func(bool)) *VirtioBlk {
	b := &VirtioBlk{disk: disk}
	copy(b.serial[:], serial)
	features := uint32(virtioBlkFSegMax | virtioBlkFFlush)
	if readOnly {
		features |= virtioBlkFRO
	}
	b.init("virtio-blk/"+id, mem, irq, b, features, 1)
	return b
}

// Stats returns the request counters.
func (b *VirtioBlk) Stats() BlkStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stats
}

func (b *VirtioBlk) capacity() uint64 { return uint64(b.disk.Size()) / sectorSize }

// configLocked: capacity (le64 sectors), size_max (unused), seg_max.
func (b *VirtioBlk) configLocked() []byte {
	var c [16]byte
	binary.LittleEndian.PutUint64(c[0:], b.capacity())
	binary.LittleEndian.PutUint32(c[12:], virtioQueueSize-2)
	return c[:]
}

func (b *VirtioBlk) notifyLocked(int) { b.processLocked() }

func (b *VirtioBlk) driverOKLocked() {}

// Poll retries requests a Disk refused with ErrOutputFull. It does nothing
// while the device is quiesced; safe to call from any goroutine.
func (b *VirtioBlk) Poll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.quiesced && b.usableLocked(0) {
		b.processLocked()
	}
}

var _ Device = (*VirtioBlk)(nil)

// Quiesce implements Quiescer: it waits out a request in progress and stops
// Poll (retries of refused writes) until Wake.
func (b *VirtioBlk) Quiesce() { b.quiesce() }

// Wake implements Quiescer.
func (b *VirtioBlk) Wake() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.wakeLocked()
	if b.usableLocked(0) {
		b.processLocked()
	}
}

// processLocked handles every available request, until the ring is empty or
// the disk refuses with ErrOutputFull.
func (b *VirtioBlk) processLocked() {
	r := b.queue(0)
	flags, pending, err := r.avail()
	if err != nil {
		b.brokenLocked(err)
		return
	}
	done := false
	for ; pending > 0; pending-- {
		head, segs, err := r.next(b.segs[:0], 2*maxBlkData)
		b.segs = segs
		if err != nil {
			b.brokenLocked(err)
			break
		}
		written, err := b.requestLocked()
		if errors.Is(err, ErrOutputFull) {
			b.stats.Refused++
			break // unconsumed: retried on the next notify or Poll
		}
		if err != nil {
			b.brokenLocked(err)
			break
		}
		if err := r.push(head, written); err != nil {
			b.brokenLocked(err)
			break
		}
		done = true
	}
	if done {
		b.interruptLocked(flags)
	}
}

// requestLocked performs the request in b.segs and writes its status byte.
// It returns the bytes written into guest memory; ErrOutputFull if the disk
// refused (nothing was written to the guest); another error if the chain
// cannot carry a request (no room for the header or the status byte).
func (b *VirtioBlk) requestLocked() (uint32, error) {
	readable, writable := segsLen(b.segs)
	if readable < virtioBlkHdrLen || writable < 1 {
		return 0, fmt.Errorf("%w: block request with %d readable and %d writable bytes", errBadChain, readable, writable)
	}
	dataOut, dataIn := readable-virtioBlkHdrLen, writable-1
	var hdr [virtioBlkHdrLen]byte
	if dataOut > maxBlkData {
		// Only the header is needed to fail it.
		b.buf = growBuf(b.buf, virtioBlkHdrLen)
	} else {
		b.buf = growBuf(b.buf, int(readable))
	}
	if err := gatherPrefix(b.mem, b.segs, b.buf); err != nil {
		return 0, err
	}
	copy(hdr[:], b.buf)
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	status, written := uint8(virtioBlkSOK), uint64(0)
	switch typ {
	case virtioBlkTIn:
		off, ok := b.rangeOK(sector, dataIn)
		if !ok || dataOut != 0 {
			status = virtioBlkSIOErr
			break
		}
		data := growBuf(b.buf, int(dataIn))
		b.buf = data
		if _, err := b.disk.ReadAt(data, off); err != nil {
			slog.Debug("virtio-blk: disk read failed", "sector", sector, "err", err)
			status = virtioBlkSIOErr
			break
		}
		if err := scatter(b.mem, b.segs, 0, data); err != nil {
			return 0, err
		}
		b.stats.Reads++
		written = dataIn
	case virtioBlkTOut:
		off, ok := b.rangeOK(sector, dataOut)
		if !ok || b.st.HostFeatures&virtioBlkFRO != 0 {
			status = virtioBlkSIOErr
			break
		}
		if _, err := b.disk.WriteAt(b.buf[virtioBlkHdrLen:readable], off); errors.Is(err, ErrOutputFull) {
			return 0, err
		} else if err != nil {
			slog.Debug("virtio-blk: disk write failed", "sector", sector, "err", err)
			status = virtioBlkSIOErr
			break
		}
		b.stats.Writes++
	case virtioBlkTFlush:
		if err := b.disk.Flush(); errors.Is(err, ErrOutputFull) {
			return 0, err
		} else if err != nil {
			slog.Warn("virtio-blk: disk flush failed", "err", err)
			status = virtioBlkSIOErr
			break
		}
		b.stats.Flushes++
	case virtioBlkTGetID:
		n := min(dataIn, virtioBlkIDLen)
		if err := scatter(b.mem, b.segs, 0, b.serial[:n]); err != nil {
			return 0, err
		}
		written = n
	default:
		status = virtioBlkSUnsupp
	}
	if status != virtioBlkSOK {
		b.stats.Errors++
	}
	if err := scatter(b.mem, b.segs, dataIn, []byte{status}); err != nil {
		return 0, err
	}
	return uint32(written + 1), nil
}

// rangeOK checks that n bytes from sector are whole sectors inside the disk
// and not more than one request may carry; it returns the byte offset.
func (b *VirtioBlk) rangeOK(sector, n uint64) (int64, bool) {
	capacity := b.capacity()
	if n%sectorSize != 0 || n > maxBlkData || sector > capacity || n/sectorSize > capacity-sector {
		return 0, false
	}
	return int64(sector * sectorSize), true
}

// gatherPrefix copies the first len(dst) readable bytes of the chain.
func gatherPrefix(mem *GuestMemory, segs []vseg, dst []byte) error {
	off := 0
	for _, s := range segs {
		if s.write || off == len(dst) {
			continue
		}
		n := min(int(s.len), len(dst)-off)
		if _, err := mem.ReadAt(dst[off:off+n], int64(s.gpa)); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// ID implements Component.
func (b *VirtioBlk) ID() string { return b.id }

// StateVersion implements Component.
func (b *VirtioBlk) StateVersion() uint32 { return 1 }

// SaveState implements Component.
func (b *VirtioBlk) SaveState() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return encodePlain(&blkState{Core: b.st, Capacity: b.capacity()})
}

// RestoreState implements Component. The disk must have the saved capacity.
func (b *VirtioBlk) RestoreState(version uint32, data []byte) error {
	if err := checkVersion(b.ID(), version, b.StateVersion()); err != nil {
		return err
	}
	var st blkState
	if err := decodePlain(data, &st); err != nil {
		return fmt.Errorf("%s: %w", b.ID(), err)
	}
	if st.Capacity != b.capacity() {
		return fmt.Errorf("%s: saved with a disk of %d sectors, this one has %d: %w", b.ID(), st.Capacity, b.capacity(), ErrMismatch)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.checkRestore(&st.Core); err != nil {
		return err
	}
	b.st = st.Core
	return nil
}
