package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The legacy (virtio 0.9.5) split virtqueue, as guests/pure/vring.c lays it
// out from the page frame number the driver gives: the descriptor table
// (16 bytes per entry), the available ring {flags, idx, ring[N], used_event},
// then, on the next 4096-byte boundary, the used ring {flags, idx,
// {id, len}[N], avail_event}.
const (
	vringAlign = 4096

	vringDescFNext     = 1
	vringDescFWrite    = 2
	vringDescFIndirect = 4

	vringAvailFNoInterrupt = 1

	vringDescSize = 16
	vringUsedElem = 8
)

// errBadChain says the driver broke the ring protocol: the device stops
// using the queue until it is reset.
var errBadChain = errors.New("malformed descriptor chain")

// vqState is the plain-data state of one virtqueue. Size is fixed by the
// device; the rest is what the driver set up and how far the device got.
type vqState struct {
	// Size is the number of entries (a power of two); 0: no such queue.
	Size uint16
	// LastAvail is the next available-ring entry the device consumes.
	LastAvail uint16
	// UsedIdx is the used ring's idx as the device last published it.
	UsedIdx uint16
	_       uint16
	// PFN is the ring's guest page frame number; 0: not set up.
	PFN uint32
}

func (q *vqState) descGPA() uint64  { return uint64(q.PFN) * vringAlign }
func (q *vqState) availGPA() uint64 { return q.descGPA() + vringDescSize*uint64(q.Size) }
func (q *vqState) usedGPA() uint64 {
	end := q.availGPA() + 2*(3+uint64(q.Size))
	return (end + vringAlign - 1) &^ (vringAlign - 1)
}

// ringEnd is one past the last byte of the used ring.
func (q *vqState) ringEnd() uint64 { return q.usedGPA() + 6 + vringUsedElem*uint64(q.Size) }

// vseg is one descriptor of a chain: guest memory the device reads or writes.
type vseg struct {
	gpa   uint64
	len   uint32
	write bool
}

// vring accesses one queue's rings in guest memory. Every method checks what
// it reads; none panics on what the driver wrote.
type vring struct {
	mem *GuestMemory
	q   *vqState
}

// checkPlacement says whether the whole ring lies in one RAM slot.
func (r vring) checkPlacement() error {
	n := r.q.ringEnd() - r.q.descGPA()
	if _, err := r.mem.offset(r.q.descGPA(), int(n)); err != nil {
		return fmt.Errorf("ring of %d entries at PFN %#x: %w", r.q.Size, r.q.PFN, err)
	}
	return nil
}

// avail returns the available ring's flags and how many entries wait.
func (r vring) avail() (flags uint16, pending uint16, err error) {
	w, err := loadRingWord(r.mem, r.q.availGPA())
	if err != nil {
		return 0, 0, err
	}
	flags, idx := uint16(w), uint16(w>>16)
	pending = idx - r.q.LastAvail
	if pending > r.q.Size {
		return 0, 0, fmt.Errorf("%w: avail idx %d is %d ahead of %d, queue size %d", errBadChain, idx, pending, r.q.LastAvail, r.q.Size)
	}
	return flags, pending, nil
}

// head returns the descriptor index at available-ring entry LastAvail.
func (r vring) head() (uint16, error) {
	var b [2]byte
	gpa := r.q.availGPA() + 4 + 2*uint64(r.q.LastAvail%r.q.Size)
	if _, err := r.mem.ReadAt(b[:], int64(gpa)); err != nil {
		return 0, err
	}
	h := binary.LittleEndian.Uint16(b[:])
	if h >= r.q.Size {
		return 0, fmt.Errorf("%w: head %d, queue size %d", errBadChain, h, r.q.Size)
	}
	return h, nil
}

// next reads the chain at available-ring entry LastAvail into segs (see
// walk for what it refuses) and returns its head descriptor.
func (r vring) next(segs []vseg, maxBytes uint64) (uint16, []vseg, error) {
	head, err := r.head()
	if err != nil {
		return 0, segs, err
	}
	segs, err = r.walk(head, segs, maxBytes)
	return head, segs, err
}

// walk appends the chain starting at head to segs. It refuses a chain that
// is longer than the queue (a loop), names a descriptor out of range, uses
// indirect descriptors (not offered), puts a readable buffer after a
// writable one, has a buffer outside RAM, or holds more than maxBytes.
func (r vring) walk(head uint16, segs []vseg, maxBytes uint64) ([]vseg, error) {
	var d [vringDescSize]byte
	var total uint64
	seenWrite := false
	i := head
	for n := uint16(0); ; n++ {
		if n >= r.q.Size {
			return segs, fmt.Errorf("%w: chain from %d is longer than the queue (a loop)", errBadChain, head)
		}
		if _, err := r.mem.ReadAt(d[:], int64(r.q.descGPA()+vringDescSize*uint64(i))); err != nil {
			return segs, err
		}
		s := vseg{
			gpa:   binary.LittleEndian.Uint64(d[0:]),
			len:   binary.LittleEndian.Uint32(d[8:]),
			write: binary.LittleEndian.Uint16(d[12:])&vringDescFWrite != 0,
		}
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		switch {
		case flags&vringDescFIndirect != 0:
			return segs, fmt.Errorf("%w: indirect descriptor %d (not negotiated)", errBadChain, i)
		case seenWrite && !s.write:
			return segs, fmt.Errorf("%w: readable descriptor %d after a writable one", errBadChain, i)
		}
		total += uint64(s.len)
		if total > maxBytes {
			return segs, fmt.Errorf("%w: chain from %d holds more than %d bytes", errBadChain, head, maxBytes)
		}
		if s.len > 0 {
			if _, err := r.mem.offset(s.gpa, int(s.len)); err != nil {
				return segs, fmt.Errorf("%w: descriptor %d: %w", errBadChain, i, err)
			}
		}
		seenWrite = s.write
		segs = append(segs, s)
		if flags&vringDescFNext == 0 {
			return segs, nil
		}
		if next >= r.q.Size {
			return segs, fmt.Errorf("%w: descriptor %d links to %d, queue size %d", errBadChain, i, next, r.q.Size)
		}
		i = next
	}
}

// push publishes a used entry for the chain at head with written bytes and
// advances LastAvail (the chain was consumed) and UsedIdx.
func (r vring) push(head uint16, written uint32) error {
	var e [vringUsedElem]byte
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	gpa := r.q.usedGPA() + 4 + vringUsedElem*uint64(r.q.UsedIdx%r.q.Size)
	if _, err := r.mem.WriteAt(e[:], int64(gpa)); err != nil {
		return err
	}
	r.q.LastAvail++
	r.q.UsedIdx++
	// The used ring's flags are the device's to write; it asks for every
	// notification (0), so the word is just the new idx.
	return storeRingWord(r.mem, r.q.usedGPA(), uint32(r.q.UsedIdx)<<16)
}

// segsLen sums the readable and the writable bytes of a chain.
func segsLen(segs []vseg) (readable, writable uint64) {
	for _, s := range segs {
		if s.write {
			writable += uint64(s.len)
		} else {
			readable += uint64(s.len)
		}
	}
	return readable, writable
}

// gather copies the chain's readable bytes into dst (sized by the caller to
// their total).
func gather(mem *GuestMemory, segs []vseg, dst []byte) error {
	off := 0
	for _, s := range segs {
		if s.write || s.len == 0 {
			continue
		}
		if _, err := mem.ReadAt(dst[off:off+int(s.len)], int64(s.gpa)); err != nil {
			return err
		}
		off += int(s.len)
	}
	return nil
}

// scatter writes src into the chain's writable bytes from byte offset at of
// the writable stream, through the tracked WriteAt. The caller checked that
// it fits.
func scatter(mem *GuestMemory, segs []vseg, at uint64, src []byte) error {
	for _, s := range segs {
		if !s.write || len(src) == 0 {
			continue
		}
		if at >= uint64(s.len) {
			at -= uint64(s.len)
			continue
		}
		n := min(uint64(s.len)-at, uint64(len(src)))
		if _, err := mem.WriteAt(src[:n], int64(s.gpa+at)); err != nil {
			return err
		}
		src, at = src[n:], 0
	}
	if len(src) != 0 {
		return fmt.Errorf("%w: %d bytes do not fit in the writable buffers", errBadChain, len(src))
	}
	return nil
}
