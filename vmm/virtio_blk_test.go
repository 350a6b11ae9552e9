package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// Guest-physical layout of the blk tests: the ring (desc page, avail page,
// used page), then one page each for header, data and status.
const (
	tRing   = 0x10000
	tUsedPg = tRing/PageSize + 2
	tHdr    = 0x20000
	tData   = 0x30000
	tStatus = 0x40000
)

type blkFixture struct {
	t    *testing.T
	mem  *GuestMemory
	disk *vmmtest.MemDisk
	dev  *VirtioBlk
	drv  *testDriver
	q    *testVQ
	irq  irqRecorder
}

func newBlkFixture(t *testing.T, sectors int) *blkFixture {
	f := &blkFixture{t: t, mem: newTestMemory(t), disk: vmmtest.NewMemDisk(int64(sectors * sectorSize))}
	f.dev = NewVirtioBlk("0", f.mem, f.disk, false, "ftckpt-disk-0", f.irq.set)
	f.drv = &testDriver{t: t, mem: f.mem, dev: f.dev, base: testIOBase}
	host := f.drv.begin(0)
	if host != virtioBlkFSegMax|virtioBlkFFlush {
		t.Fatalf("host features %#x", host)
	}
	f.q = f.drv.setupQueue(0, tRing)
	f.q.noInterrupt = true
	f.drv.ready()
	return f
}

func (f *blkFixture) header(typ uint32, sector uint64) {
	var h [16]byte
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	writeMem(f.t, f.mem, tHdr, h[:])
	writeMem(f.t, f.mem, tStatus, []byte{0xff})
}

// request runs one header/data/status request and returns status and the
// used length.
func (f *blkFixture) request(typ uint32, sector uint64, dataLen uint32, write bool) (uint8, uint32) {
	f.t.Helper()
	f.header(typ, sector)
	bufs := []testBuf{{tHdr, 16, false}}
	if dataLen > 0 {
		bufs = append(bufs, testBuf{tData, dataLen, write})
	}
	head := f.q.add(append(bufs, testBuf{tStatus, 1, true})...)
	f.drv.notify(0)
	id, n := f.q.mustTake()
	if id != uint32(head) {
		f.t.Fatalf("used id %d, want %d", id, head)
	}
	return readMem(f.t, f.mem, tStatus, 1)[0], n
}

func TestVirtioBlkRegisters(t *testing.T) {
	f := newBlkFixture(t, 2048)
	var capacity [8]byte
	for i := range capacity {
		capacity[i] = byte(f.drv.in(virtioRegConfig+uint16(i), 1))
	}
	if got := binary.LittleEndian.Uint64(capacity[:]); got != 2048 {
		t.Errorf("capacity %d sectors, want 2048", got)
	}
	if got := f.drv.in(virtioRegConfig+12, 4); got != virtioQueueSize-2 {
		t.Errorf("seg_max %d", got)
	}
	if got := f.drv.in(virtioRegQueuePFN, 4); got != tRing/PageSize {
		t.Errorf("PFN reads %#x", got)
	}
	f.drv.out(virtioRegQueueSel, 2, 1)
	if f.drv.in(virtioRegQueueNum, 2) != 0 {
		t.Error("queue 1 exists")
	}
	f.drv.out(virtioRegQueuePFN, 4, 0x50) // ignored: no such queue
	if f.drv.status() != 7 {
		t.Errorf("status %#x", f.drv.status())
	}
	f.drv.out(virtioRegStatus, 1, 0)
	f.drv.out(virtioRegQueueSel, 2, 0)
	if f.drv.status() != 0 || f.drv.in(virtioRegQueuePFN, 4) != 0 || f.drv.in(virtioRegGuestFeatures, 4) != 0 {
		t.Error("reset left state behind")
	}
	// Guest features beyond the host's are not accepted.
	f.drv.out(virtioRegGuestFeatures, 4, 0xffffffff)
	if got := f.drv.in(virtioRegGuestFeatures, 4); got != virtioBlkFSegMax|virtioBlkFFlush {
		t.Errorf("guest features %#x", got)
	}
}

func TestVirtioBlkWriteReadFlushID(t *testing.T) {
	f := newBlkFixture(t, 64)
	sector := bytes.Repeat([]byte("ftckpt!!"), 64)
	writeMem(t, f.mem, tData, sector)
	if st, n := f.request(virtioBlkTOut, 5, 512, false); st != virtioBlkSOK || n != 1 {
		t.Fatalf("write: status %d, used len %d", st, n)
	}
	if !bytes.Equal(f.disk.Bytes()[5*512:6*512], sector) {
		t.Fatal("the disk does not hold the written sector")
	}
	writeMem(t, f.mem, tData, make([]byte, 1024))
	if st, n := f.request(virtioBlkTIn, 4, 1024, true); st != virtioBlkSOK || n != 1025 {
		t.Fatalf("read: status %d, used len %d", st, n)
	}
	got := readMem(t, f.mem, tData, 1024)
	if !bytes.Equal(got[512:], sector) || !bytes.Equal(got[:512], make([]byte, 512)) {
		t.Fatal("read data differs from the disk")
	}
	if st, _ := f.request(virtioBlkTFlush, 0, 0, false); st != virtioBlkSOK || f.disk.Flushes() != 1 {
		t.Fatalf("flush: status %d, %d flushes", st, f.disk.Flushes())
	}
	if st, n := f.request(virtioBlkTGetID, 0, 20, true); st != virtioBlkSOK || n != 21 {
		t.Fatalf("get-id: status %d, len %d", st, n)
	}
	if id := readMem(t, f.mem, tData, 20); string(bytes.TrimRight(id, "\x00")) != "ftckpt-disk-0" {
		t.Fatalf("id %q", id)
	}
	if s := f.dev.Stats(); s.Reads != 1 || s.Writes != 1 || s.Flushes != 1 || s.Errors != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestVirtioBlkErrors(t *testing.T) {
	f := newBlkFixture(t, 64)
	for _, c := range []struct {
		name   string
		typ    uint32
		sector uint64
		n      uint32
		write  bool
		want   uint8
	}{
		{"read past the end", virtioBlkTIn, 64, 512, true, virtioBlkSIOErr},
		{"read straddling the end", virtioBlkTIn, 63, 1024, true, virtioBlkSIOErr},
		{"write past the end", virtioBlkTOut, 1 << 60, 512, false, virtioBlkSIOErr},
		{"sector overflow", virtioBlkTOut, ^uint64(0), 512, false, virtioBlkSIOErr},
		{"partial sector", virtioBlkTIn, 0, 100, true, virtioBlkSIOErr},
		{"read with a readable data buffer", virtioBlkTIn, 0, 512, false, virtioBlkSIOErr},
		{"unknown type", 77, 0, 512, true, virtioBlkSUnsupp},
	} {
		if st, n := f.request(c.typ, c.sector, c.n, c.write); st != c.want || n != 1 {
			t.Errorf("%s: status %d used len %d, want status %d len 1", c.name, st, n, c.want)
		}
	}
	if f.drv.status()&virtioStatusNeedsReset != 0 {
		t.Fatal("a well-formed request with bad contents broke the device")
	}
	if !bytes.Equal(f.disk.Bytes(), make([]byte, 64*512)) {
		t.Fatal("a refused request changed the disk")
	}
	ro := NewVirtioBlk("1", f.mem, f.disk, true, "", nil)
	f.drv.dev = ro
	if f.drv.begin(^uint32(0))&virtioBlkFRO == 0 {
		t.Fatal("read-only device does not offer VIRTIO_BLK_F_RO")
	}
	f.q = f.drv.setupQueue(0, tRing)
	f.drv.ready()
	if st, _ := f.request(virtioBlkTOut, 0, 512, false); st != virtioBlkSIOErr {
		t.Fatalf("write to a read-only disk: status %d", st)
	}
}

// TestVirtioBlkBadChains feeds chains that break the ring protocol: the
// device must not panic, must not complete them, must say NEEDS_RESET, and
// must work again after a reset.
func TestVirtioBlkBadChains(t *testing.T) {
	for _, c := range []struct {
		name string
		post func(f *blkFixture)
	}{
		{"loop", func(f *blkFixture) {
			f.q.writeDesc(0, tHdr, 16, vringDescFNext, 1)
			f.q.writeDesc(1, tHdr, 16, vringDescFNext, 0)
			f.q.publish(0)
		}},
		{"next out of range", func(f *blkFixture) {
			f.q.writeDesc(0, tHdr, 16, vringDescFNext, 999)
			f.q.publish(0)
		}},
		{"head out of range", func(f *blkFixture) { f.q.publish(300) }},
		{"buffer beyond RAM", func(f *blkFixture) {
			f.q.add(testBuf{tHdr, 16, false}, testBuf{MinMemory - 100, 512, true}, testBuf{tStatus, 1, true})
		}},
		{"address overflow", func(f *blkFixture) {
			f.q.add(testBuf{^uint64(0) - 4, 16, false}, testBuf{tStatus, 1, true})
		}},
		{"huge length", func(f *blkFixture) {
			f.q.add(testBuf{tHdr, 16, false}, testBuf{0, 0xffffffff, true}, testBuf{tStatus, 1, true})
		}},
		{"indirect", func(f *blkFixture) {
			f.q.writeDesc(0, tHdr, 16, vringDescFIndirect, 0)
			f.q.publish(0)
		}},
		{"readable after writable", func(f *blkFixture) {
			f.q.add(testBuf{tHdr, 16, false}, testBuf{tStatus, 1, true}, testBuf{tData, 512, false})
		}},
		{"no status byte", func(f *blkFixture) { f.q.add(testBuf{tHdr, 16, false}) }},
		{"short header", func(f *blkFixture) { f.q.add(testBuf{tHdr, 8, false}, testBuf{tStatus, 1, true}) }},
		{"avail idx jump", func(f *blkFixture) { f.q.setAvailIdx(1000) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newBlkFixture(t, 64)
			f.header(virtioBlkTIn, 0)
			c.post(f)
			f.drv.notify(0)
			if f.q.usedIdx() != 0 {
				t.Fatal("the device completed a malformed chain")
			}
			if f.drv.status()&virtioStatusNeedsReset == 0 {
				t.Fatalf("status %#x lacks NEEDS_RESET", f.drv.status())
			}
			f.dev.Poll()
			f.drv.notify(0) // ignored until reset
			if f.q.usedIdx() != 0 {
				t.Fatal("a broken device went on processing")
			}
			f.drv.begin(0)
			f.q = f.drv.setupQueue(0, tRing)
			f.q.noInterrupt = true
			f.drv.ready()
			if st, _ := f.request(virtioBlkTIn, 1, 512, true); st != virtioBlkSOK {
				t.Fatalf("after reset: status %d", st)
			}
		})
	}
}

// TestVirtioBlkDirtyExact proves that device writes to guest memory are all
// tracked: after a read request the VMM dirty bitmap holds exactly the used
// ring's page, the data pages and the status page.
func TestVirtioBlkDirtyExact(t *testing.T) {
	f := newBlkFixture(t, 64)
	if _, err := f.disk.WriteAt([]byte{0xab}, 3*512); err != nil {
		t.Fatal(err)
	}
	f.header(virtioBlkTIn, 3)
	// Data spanning two pages, in two descriptors.
	f.q.add(testBuf{tHdr, 16, false}, testBuf{tData + PageSize - 256, 256, true},
		testBuf{tData + PageSize, 256, true}, testBuf{tStatus, 1, true})
	dirtyPages(f.mem) // the driver's own writes
	f.drv.notify(0)
	got := dirtyPages(f.mem)
	want := []uint64{tUsedPg, tData / PageSize, tData/PageSize + 1, tStatus / PageSize}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("dirty pages %v, want %v", got, want)
	}
	if readMem(t, f.mem, tData+PageSize-256, 1)[0] != 0xab {
		t.Fatal("data not delivered")
	}
}

func TestVirtioBlkOutputFullRetry(t *testing.T) {
	f := newBlkFixture(t, 64)
	f.disk.Refuse(ErrOutputFull)
	writeMem(t, f.mem, tData, bytes.Repeat([]byte{7}, 512))
	f.header(virtioBlkTOut, 2)
	f.q.add(testBuf{tHdr, 16, false}, testBuf{tData, 512, false}, testBuf{tStatus, 1, true})
	f.drv.notify(0)
	if f.q.usedIdx() != 0 || f.dev.Stats().Refused != 1 {
		t.Fatal("a refused write was completed")
	}
	f.drv.notify(0)
	if f.q.usedIdx() != 0 || f.dev.Stats().Refused != 2 {
		t.Fatal("a second notify did not retry or completed a refused write")
	}
	// Quiesced: Poll does nothing, not even after the disk has room.
	f.disk.Refuse(nil)
	f.dev.Quiesce()
	dirtyPages(f.mem)
	f.dev.Poll()
	if f.q.usedIdx() != 0 || len(dirtyPages(f.mem)) != 0 || f.disk.Bytes()[2*512] != 0 {
		t.Fatal("a quiesced device worked")
	}
	f.dev.Wake()
	if id, n := f.q.mustTake(); id != 0 || n != 1 {
		t.Fatalf("used %d/%d", id, n)
	}
	if f.disk.Bytes()[2*512] != 7 || readMem(t, f.mem, tStatus, 1)[0] != virtioBlkSOK {
		t.Fatal("the retried write did not happen")
	}
}

func TestVirtioBlkInterrupt(t *testing.T) {
	f := newBlkFixture(t, 64)
	f.q.noInterrupt = false
	f.request(virtioBlkTIn, 0, 512, true)
	if !slices.Equal(f.irq.levels, []bool{true}) {
		t.Fatalf("irq levels %v, want [true]", f.irq.levels)
	}
	if isr := f.drv.in(virtioRegISR, 1); isr != virtioISRQueue {
		t.Fatalf("ISR %#x", isr)
	}
	if isr := f.drv.in(virtioRegISR, 1); isr != 0 {
		t.Fatalf("ISR %#x after a read", isr)
	}
	if !slices.Equal(f.irq.levels, []bool{true, false}) {
		t.Fatalf("irq levels %v, want [true false]", f.irq.levels)
	}
	f.q.noInterrupt = true
	f.request(virtioBlkTIn, 0, 512, true)
	if len(f.irq.levels) != 2 || f.drv.in(virtioRegISR, 1) != 0 {
		t.Fatal("interrupt despite VRING_AVAIL_F_NO_INTERRUPT")
	}
}

func TestVirtioBlkStateRoundTrip(t *testing.T) {
	f := newBlkFixture(t, 64)
	f.request(virtioBlkTIn, 0, 512, true)
	saved, err := f.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	// A fresh device over the same memory and disk continues the queue.
	dev2 := NewVirtioBlk("0", f.mem, f.disk, false, "", nil)
	if err := dev2.RestoreState(dev2.StateVersion(), saved); err != nil {
		t.Fatal(err)
	}
	again, _ := dev2.SaveState()
	if !bytes.Equal(saved, again) {
		t.Fatal("save → restore → save differs")
	}
	f.drv.dev = dev2
	if st, _ := f.request(virtioBlkTIn, 1, 512, true); st != virtioBlkSOK || f.q.usedIdx() != 2 {
		t.Fatalf("restored device: status %d used idx %d", st, f.q.usedIdx())
	}
	if err := dev2.RestoreState(2, saved); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 2: %v", err)
	}
	if err := dev2.RestoreState(1, saved[:len(saved)-1]); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
	small := NewVirtioBlk("0", f.mem, vmmtest.NewMemDisk(512), false, "", nil)
	if err := small.RestoreState(1, saved); !errors.Is(err, ErrMismatch) {
		t.Fatalf("another disk size: %v", err)
	}
	bad := slices.Clone(saved)
	binary.LittleEndian.PutUint32(bad[20:], 0x7fffffff) // queue 0's PFN: beyond RAM
	if err := dev2.RestoreState(1, bad); !errors.Is(err, ErrMismatch) {
		t.Fatalf("ring beyond RAM: %v", err)
	}
	after, _ := dev2.SaveState()
	if err := dev2.RestoreState(1, after); err != nil || !bytes.Equal(after, mustSave(t, dev2)) {
		t.Fatal("a refused restore changed the device")
	}
}

func mustSave(t *testing.T, c Component) []byte {
	t.Helper()
	b, err := c.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
