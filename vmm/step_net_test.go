package vmm

import (
	"bytes"
	"testing"
)

// TestReceiveNowDeliversOrDrops: a stepped machine's receive leaves nothing
// in the host queue: delivered into a posted buffer or dropped.
func TestReceiveNowDeliversOrDrops(t *testing.T) {
	f := newNetFixture(t)
	frame := testFrame(200, 0x5a)
	if f.dev.ReceiveNow(frame) {
		t.Fatal("delivered with no buffer posted")
	}
	if n := f.dev.rx.len(); n != 0 {
		t.Fatalf("%d frames wait in the host queue", n)
	}
	// A buffer posted now gets nothing: the frame was dropped, not queued.
	head := f.postRX(MaxFrame)
	f.drv.notify(virtioNetRXQ)
	if _, _, ok := f.rxq.take(); ok {
		t.Fatal("a dropped frame reached the guest later")
	}
	dirtyPages(f.mem)
	if !f.dev.ReceiveNow(frame) {
		t.Fatal("not delivered into a posted buffer")
	}
	id, n := f.rxq.mustTake()
	if id != uint32(head) || n != virtioNetHdrLen+200 || !bytes.Equal(readMem(t, f.mem, tRxBuf, 200), frame) {
		t.Fatalf("used %d/%d or the frame differs", id, n)
	}
	if len(dirtyPages(f.mem)) == 0 {
		t.Fatal("delivery wrote guest memory outside WriteAt (no VMM-dirty page)")
	}
	// Too big for the posted buffer, a runt, an oversize frame: dropped.
	f.postRX(100)
	if f.dev.ReceiveNow(testFrame(300, 1)) || f.dev.ReceiveNow(testFrame(10, 1)) || f.dev.ReceiveNow(testFrame(MaxFrame+1, 1)) {
		t.Fatal("an undeliverable frame was reported delivered")
	}
	// A frame some backend queued (Receive) does not wait for a later
	// delivery either.
	f.dev.Receive(testFrame(60, 2))
	if !f.dev.ReceiveNow(testFrame(64, 3)) || f.dev.rx.len() != 0 {
		t.Fatal("the buffer that stayed posted did not take the new frame, or the queue kept one")
	}
	if _, n := f.rxq.mustTake(); n != virtioNetHdrLen+64 {
		t.Fatalf("delivered %d bytes, want the new 64-byte frame", n-virtioNetHdrLen)
	}
	if s := f.dev.Stats(); s.RxFrames != 2 || s.RxDropped != 5 {
		t.Fatalf("stats %+v, want 2 delivered and 5 dropped", s)
	}
	// A device not ready drops.
	f.drv.out(virtioRegStatus, 1, 0)
	if f.dev.ReceiveNow(frame) || f.dev.rx.len() != 0 {
		t.Fatal("a reset device took or kept a frame")
	}
}
