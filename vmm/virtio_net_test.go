package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
)

// sinkRecorder is a FrameSink that keeps copies and can refuse.
type sinkRecorder struct {
	frames [][]byte
	refuse bool
	fail   bool
}

func (s *sinkRecorder) SendFrame(f []byte) error {
	if s.refuse {
		return ErrOutputFull
	}
	if s.fail {
		return errors.New("link down")
	}
	s.frames = append(s.frames, slices.Clone(f))
	return nil
}

// Guest-physical layout of the net tests: RX ring, TX ring, buffers.
const (
	tRxRing = 0x10000
	tTxRing = 0x14000
	tRxHdr  = 0x20000
	tRxBuf  = 0x21000
	tTxHdr  = 0x30000
	tTxBuf  = 0x31000
)

type netFixture struct {
	t        *testing.T
	mem      *GuestMemory
	sink     *sinkRecorder
	dev      *VirtioNet
	drv      *testDriver
	rxq, txq *testVQ
}

func newNetFixture(t *testing.T) *netFixture {
	f := &netFixture{t: t, mem: newTestMemory(t), sink: &sinkRecorder{}}
	f.dev = NewVirtioNet("0", f.mem, [6]byte{2, 0, 0, 0, 0, 9}, f.sink, nil, 4)
	f.drv = &testDriver{t: t, mem: f.mem, dev: f.dev, base: testIOBase}
	if host := f.drv.begin(virtioNetFMAC); host != virtioNetFMAC|virtioNetFStatus {
		t.Fatalf("host features %#x", host)
	}
	f.rxq = f.drv.setupQueue(virtioNetRXQ, tRxRing)
	f.txq = f.drv.setupQueue(virtioNetTXQ, tTxRing)
	f.rxq.noInterrupt, f.txq.noInterrupt = true, true
	f.drv.ready()
	return f
}

// postRX posts one header+frame receive chain with a frame buffer of n bytes.
func (f *netFixture) postRX(n uint32) uint16 {
	writeMem(f.t, f.mem, tRxHdr, bytes.Repeat([]byte{0xee}, virtioNetHdrLen))
	return f.rxq.add(testBuf{tRxHdr, virtioNetHdrLen, true}, testBuf{tRxBuf, n, true})
}

// transmit posts frame after a header and notifies the TX queue.
func (f *netFixture) transmit(frame []byte) {
	writeMem(f.t, f.mem, tTxHdr, make([]byte, virtioNetHdrLen))
	writeMem(f.t, f.mem, tTxBuf, frame)
	f.txq.add(testBuf{tTxHdr, virtioNetHdrLen, false}, testBuf{tTxBuf, uint32(len(frame)), false})
	f.drv.notify(virtioNetTXQ)
}

func testFrame(n int, fill byte) []byte {
	fr := bytes.Repeat([]byte{fill}, n)
	copy(fr, []byte{2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
	return fr
}

func TestVirtioNetConfig(t *testing.T) {
	f := newNetFixture(t)
	var cfg [8]byte
	for i := range cfg {
		cfg[i] = byte(f.drv.in(virtioRegConfig+uint16(i), 1))
	}
	if !bytes.Equal(cfg[:6], []byte{2, 0, 0, 0, 0, 9}) || binary.LittleEndian.Uint16(cfg[6:]) != virtioNetLinkUp {
		t.Fatalf("config % x", cfg)
	}
	if f.drv.in(virtioRegConfig+8, 1) != 0xff {
		t.Fatal("a read past the config is not all ones")
	}
	if f.drv.in(virtioRegGuestFeatures, 4) != virtioNetFMAC {
		t.Fatal("negotiated features wrong")
	}
}

func TestVirtioNetTransmit(t *testing.T) {
	f := newNetFixture(t)
	frame := testFrame(100, 0x5a)
	f.transmit(frame)
	if len(f.sink.frames) != 1 || !bytes.Equal(f.sink.frames[0], frame) {
		t.Fatalf("sink got %d frames", len(f.sink.frames))
	}
	if id, n := f.txq.mustTake(); id != 0 || n != 0 {
		t.Fatalf("used %d/%d", id, n)
	}
	// Malformed: oversize, runt, writable descriptor. Each is completed
	// (the guest gets its buffer back) and dropped.
	f.transmit(testFrame(MaxFrame+1, 1))
	f.transmit(testFrame(10, 1))
	f.txq.add(testBuf{tTxHdr, virtioNetHdrLen, false}, testBuf{tTxBuf, 100, true})
	f.drv.notify(virtioNetTXQ)
	for range 3 {
		f.txq.mustTake()
	}
	f.sink.fail = true
	f.transmit(frame)
	f.txq.mustTake()
	if s := f.dev.Stats(); len(f.sink.frames) != 1 || s.TxFrames != 1 || s.TxDropped != 4 {
		t.Fatalf("sink got %d frames, stats %+v", len(f.sink.frames), s)
	}
	if f.drv.status()&virtioStatusNeedsReset != 0 {
		t.Fatal("a malformed frame broke the device")
	}
}

func TestVirtioNetTransmitOutputFull(t *testing.T) {
	f := newNetFixture(t)
	f.sink.refuse = true
	for i := range 2 {
		buf := uint64(tTxBuf + 0x1000*i)
		writeMem(t, f.mem, buf, testFrame(64, byte(i+1)))
		f.txq.add(testBuf{tTxHdr, virtioNetHdrLen, false}, testBuf{buf, 64, false})
		f.drv.notify(virtioNetTXQ)
	}
	if f.txq.usedIdx() != 0 || len(f.sink.frames) != 0 {
		t.Fatal("refused frames were consumed")
	}
	f.sink.refuse = false
	f.dev.Poll()
	if f.txq.usedIdx() != 2 || len(f.sink.frames) != 2 || f.sink.frames[0][20] != 1 || f.sink.frames[1][20] != 2 {
		t.Fatalf("after Poll: used %d, %d frames", f.txq.usedIdx(), len(f.sink.frames))
	}
}

func TestVirtioNetReceive(t *testing.T) {
	f := newNetFixture(t)
	head := f.postRX(MaxFrame)
	f.drv.notify(virtioNetRXQ)
	frame := testFrame(300, 0x77)
	if !f.dev.Receive(frame) {
		t.Fatal("Receive refused a frame")
	}
	dirtyPages(f.mem)
	f.dev.Poll()
	id, n := f.rxq.mustTake()
	if id != uint32(head) || n != virtioNetHdrLen+300 {
		t.Fatalf("used %d/%d", id, n)
	}
	if h := readMem(t, f.mem, tRxHdr, virtioNetHdrLen); !bytes.Equal(h, make([]byte, virtioNetHdrLen)) {
		t.Fatalf("header % x, want zeros", h)
	}
	if !bytes.Equal(readMem(t, f.mem, tRxBuf, 300), frame) {
		t.Fatal("frame differs")
	}
	want := []uint64{tRxRing/PageSize + 2, tRxHdr / PageSize, tRxBuf / PageSize}
	if got := dirtyPages(f.mem); !slices.Equal(got, want) {
		t.Fatalf("dirty pages %v, want %v", got, want)
	}
}

func TestVirtioNetReceiveLimits(t *testing.T) {
	f := newNetFixture(t)
	if f.dev.Receive(testFrame(MaxFrame+1, 1)) || f.dev.Receive(testFrame(13, 1)) {
		t.Fatal("an oversize or runt frame was queued")
	}
	// No buffer posted: frames wait, up to the backlog (4), then drop.
	for i := range 5 {
		ok := f.dev.Receive(testFrame(60, byte(i)))
		if ok != (i < 4) {
			t.Fatalf("frame %d: queued %v", i, ok)
		}
	}
	f.dev.Poll()
	if f.rxq.usedIdx() != 0 {
		t.Fatal("delivered without a buffer")
	}
	// A buffer too small for the next frame: that frame is dropped, the
	// buffer stays posted and takes the following one.
	f.dev.rx.frames[0] = testFrame(200, 0)
	f.postRX(100)
	f.drv.notify(virtioNetRXQ)
	if _, n := f.rxq.mustTake(); n != virtioNetHdrLen+60 || readMem(t, f.mem, tRxBuf+20, 1)[0] != 1 {
		t.Fatalf("used len %d or wrong frame", n)
	}
	if s := f.dev.Stats(); s.RxFrames != 1 || s.RxDropped != 4 {
		t.Fatalf("stats %+v", s)
	}
	// A receive chain with a device-readable buffer breaks the device.
	f.rxq.add(testBuf{tRxHdr, virtioNetHdrLen, false}, testBuf{tRxBuf, MaxFrame, true})
	f.drv.notify(virtioNetRXQ)
	if f.drv.status()&virtioStatusNeedsReset == 0 {
		t.Fatal("a readable receive buffer was accepted")
	}
}

// TestVirtioNetQuiesced: a quiesced device writes nothing into guest memory,
// whoever calls Poll; Wake delivers what waited.
func TestVirtioNetQuiesced(t *testing.T) {
	f := newNetFixture(t)
	f.postRX(MaxFrame)
	f.drv.notify(virtioNetRXQ)
	f.dev.Quiesce()
	dirtyPages(f.mem)
	f.dev.Receive(testFrame(80, 3))
	f.dev.Poll()
	f.drv.notify(virtioNetRXQ) // a vCPU still running before the barrier
	if got := dirtyPages(f.mem); len(got) != 0 || f.rxq.usedIdx() != 0 {
		t.Fatalf("quiesced device dirtied %v", got)
	}
	f.dev.Wake()
	if _, n := f.rxq.mustTake(); n != virtioNetHdrLen+80 {
		t.Fatalf("used len %d after Wake", n)
	}
}

func TestVirtioNetNotReadyHoldsFrames(t *testing.T) {
	f := newNetFixture(t)
	f.drv.out(virtioRegStatus, 1, virtioStatusAcknowledge|virtioStatusDriver) // not DRIVER_OK
	f.postRX(MaxFrame)
	f.dev.Receive(testFrame(64, 1))
	f.dev.Poll()
	if f.rxq.usedIdx() != 0 {
		t.Fatal("delivered before DRIVER_OK")
	}
	f.drv.ready()
	f.rxq.mustTake()
}

func TestVirtioNetStateRoundTrip(t *testing.T) {
	f := newNetFixture(t)
	f.transmit(testFrame(64, 1))
	saved := mustSave(t, f.dev)
	dev2 := NewVirtioNet("0", f.mem, f.dev.MAC(), f.sink, nil, 4)
	if err := dev2.RestoreState(1, saved); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(saved, mustSave(t, dev2)) {
		t.Fatal("save → restore → save differs")
	}
	f.drv.dev = dev2
	f.transmit(testFrame(64, 2))
	if f.txq.usedIdx() != 2 || len(f.sink.frames) != 2 {
		t.Fatal("restored device lost its place in the ring")
	}
	other := NewVirtioNet("0", f.mem, [6]byte{2, 1, 1, 1, 1, 1}, f.sink, nil, 4)
	if err := other.RestoreState(1, saved); !errors.Is(err, ErrMismatch) {
		t.Fatalf("another MAC: %v", err)
	}
	if err := dev2.RestoreState(0, saved); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 0: %v", err)
	}
	if err := dev2.RestoreState(1, saved[:5]); !errors.Is(err, ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
	bad := slices.Clone(saved)
	bad[4] = 0xff // guest features beyond the host's
	if err := dev2.RestoreState(1, bad); !errors.Is(err, ErrMismatch) {
		t.Fatalf("bad features: %v", err)
	}
}

// TestVirtioQueueIndexWraps drives more requests than the ring has entries,
// so the 16-bit indexes pass 255→256 and the ring positions wrap.
func TestVirtioQueueIndexWraps(t *testing.T) {
	f := newNetFixture(t)
	for i := range 600 {
		f.transmit(testFrame(64, byte(i)))
		if _, _, ok := f.txq.take(); !ok {
			t.Fatalf("request %d not completed", i)
		}
	}
	if f.txq.usedIdx() != 600 || len(f.sink.frames) != 600 || f.sink.frames[599][20] != byte(599%256) {
		t.Fatalf("used idx %d, %d frames", f.txq.usedIdx(), len(f.sink.frames))
	}
}
