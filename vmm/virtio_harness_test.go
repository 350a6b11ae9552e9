package vmm

import (
	"encoding/binary"
	"testing"
)

// A test driver that plays guests/lib/virtio.c and guests/pure/vring.c
// against a device over a GuestMemory (no KVM): port I/O straight into the
// device, rings written with WriteAt.

const testIOBase = VirtioIOBase

type testDriver struct {
	t    *testing.T
	mem  *GuestMemory
	dev  PIODevice
	base uint16
}

func newTestMemory(t *testing.T) *GuestMemory {
	t.Helper()
	mem, err := NewGuestMemory(MinMemory)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

func (d *testDriver) out(off uint16, size int, v uint32) {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	d.dev.PIOWrite(d.base+off, b)
}

func (d *testDriver) in(off uint16, size int) uint32 {
	b := make([]byte, size)
	d.dev.PIORead(d.base+off, b)
	var v uint32
	for i := size - 1; i >= 0; i-- {
		v = v<<8 | uint32(b[i])
	}
	return v
}

// begin resets, acknowledges and negotiates as virtio_begin does; it
// returns the host features.
func (d *testDriver) begin(wanted uint32) uint32 {
	d.out(virtioRegStatus, 1, 0)
	d.out(virtioRegStatus, 1, virtioStatusAcknowledge)
	d.out(virtioRegStatus, 1, virtioStatusAcknowledge|virtioStatusDriver)
	host := d.in(virtioRegHostFeatures, 4)
	d.out(virtioRegGuestFeatures, 4, host&wanted)
	return host
}

func (d *testDriver) ready() {
	d.out(virtioRegStatus, 1, virtioStatusAcknowledge|virtioStatusDriver|virtioStatusDriverOK)
}

func (d *testDriver) status() uint8 { return uint8(d.in(virtioRegStatus, 1)) }

// setupQueue places queue idx's rings at gpa (page-aligned), zeroed.
func (d *testDriver) setupQueue(idx int, gpa uint64) *testVQ {
	d.t.Helper()
	d.out(virtioRegQueueSel, 2, uint32(idx))
	num := d.in(virtioRegQueueNum, 2)
	if num == 0 || num&(num-1) != 0 {
		d.t.Fatalf("queue %d: size %d", idx, num)
	}
	if pfn := d.in(virtioRegQueuePFN, 4); pfn != 0 {
		d.t.Fatalf("queue %d: PFN %#x after reset", idx, pfn)
	}
	q := &testVQ{t: d.t, mem: d.mem, num: uint16(num)}
	st := vqState{Size: q.num, PFN: uint32(gpa / vringAlign)}
	q.desc, q.avail, q.used = st.descGPA(), st.availGPA(), st.usedGPA()
	d.mem.WriteAt(make([]byte, st.ringEnd()-gpa), int64(gpa))
	d.out(virtioRegQueuePFN, 4, uint32(gpa/vringAlign))
	return q
}

func (d *testDriver) notify(idx int) { d.out(virtioRegQueueNotify, 2, uint32(idx)) }

type testBuf struct {
	gpa   uint64
	len   uint32
	write bool
}

type testVQ struct {
	t                  *testing.T
	mem                *GuestMemory
	num                uint16
	desc, avail, used  uint64
	availIdx, lastUsed uint16
	nextDesc           uint16
	noInterrupt        bool
}

func (q *testVQ) writeDesc(i uint16, addr uint64, n uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	if _, err := q.mem.WriteAt(b[:], int64(q.desc+16*uint64(i))); err != nil {
		q.t.Fatal(err)
	}
}

// add writes a chain of bufs on fresh descriptors and publishes it.
func (q *testVQ) add(bufs ...testBuf) uint16 {
	head := q.nextDesc
	for k, b := range bufs {
		i := (head + uint16(k)) % q.num
		var flags, next uint16
		if b.write {
			flags |= vringDescFWrite
		}
		if k+1 < len(bufs) {
			flags |= vringDescFNext
			next = (i + 1) % q.num
		}
		q.writeDesc(i, b.gpa, b.len, flags, next)
	}
	q.nextDesc = (head + uint16(len(bufs))) % q.num
	q.publish(head)
	return head
}

// publish puts head in the available ring and bumps idx.
func (q *testVQ) publish(head uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], head)
	q.mem.WriteAt(b[:], int64(q.avail+4+2*uint64(q.availIdx%q.num)))
	q.availIdx++
	q.setAvailIdx(q.availIdx)
}

func (q *testVQ) setAvailIdx(idx uint16) {
	var b [4]byte
	if q.noInterrupt {
		b[0] = vringAvailFNoInterrupt
	}
	binary.LittleEndian.PutUint16(b[2:], idx)
	q.mem.WriteAt(b[:], int64(q.avail))
}

func (q *testVQ) usedIdx() uint16 {
	var b [2]byte
	q.mem.ReadAt(b[:], int64(q.used+2))
	return binary.LittleEndian.Uint16(b[:])
}

// take consumes one used entry; ok is false if there is none.
func (q *testVQ) take() (id, n uint32, ok bool) {
	if q.usedIdx() == q.lastUsed {
		return 0, 0, false
	}
	var e [8]byte
	q.mem.ReadAt(e[:], int64(q.used+4+8*uint64(q.lastUsed%q.num)))
	q.lastUsed++
	return binary.LittleEndian.Uint32(e[0:]), binary.LittleEndian.Uint32(e[4:]), true
}

// mustTake is take that fails the test when nothing was used.
func (q *testVQ) mustTake() (id, n uint32) {
	q.t.Helper()
	id, n, ok := q.take()
	if !ok {
		q.t.Fatal("the device used nothing")
	}
	return id, n
}

func readMem(t *testing.T, mem *GuestMemory, gpa uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := mem.ReadAt(b, int64(gpa)); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeMem(t *testing.T, mem *GuestMemory, gpa uint64, p []byte) {
	t.Helper()
	if _, err := mem.WriteAt(p, int64(gpa)); err != nil {
		t.Fatal(err)
	}
}

// dirtyPages returns the VMM-dirty page indexes and clears them.
func dirtyPages(mem *GuestMemory) []uint64 {
	bm := make([]uint64, (mem.Pages()+63)/64)
	mem.TakeVMMDirty(bm)
	var pages []uint64
	for i, w := range bm {
		for b := 0; b < 64; b++ {
			if w&(1<<b) != 0 {
				pages = append(pages, uint64(i*64+b))
			}
		}
	}
	return pages
}

// irqRecorder records the levels a device drives its line to.
type irqRecorder struct{ levels []bool }

func (r *irqRecorder) set(level bool) { r.levels = append(r.levels, level) }
