package checkpoint

import (
	"bytes"
	"errors"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// okFence lets every release through.
type okFence struct{}

func (okFence) Check(uint64) error { return nil }

// heldRig is a HeldDisk over an in-memory disk with a volatile write cache
// (as a disk image behind a host's page cache), with its output buffer;
// pos is the primary's position, polls counts calls of the poll function.
type heldRig struct {
	disk  *vmmtest.MemDisk
	held  *HeldDisk
	out   *outbuf.Buffer
	pos   atomic.Uint64
	polls chan struct{}
}

func newHeldRig(t *testing.T, size int) *heldRig {
	r := &heldRig{disk: vmmtest.NewMemDisk(int64(size)), polls: make(chan struct{}, 1<<16)}
	r.pos.Store(1)
	r.held = NewHeldDisk(r.disk, r.pos.Load)
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: okFence{}, Disk: r.held.Sink(), Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	r.out = out
	r.held.Attach(out)
	r.held.SetPoll(func() { r.polls <- struct{}{} })
	return r
}

func (r *heldRig) write(t *testing.T, off int64, s string) {
	t.Helper()
	if n, err := r.held.WriteAt([]byte(s), off); err != nil || n != len(s) {
		t.Fatalf("write %q at %d: %d, %v", s, off, n, err)
	}
}

func (r *heldRig) waitPoll(t *testing.T) {
	t.Helper()
	vmmtest.Receive(t, "the device to be polled", r.polls)
}

func (r *heldRig) noPoll(t *testing.T) {
	t.Helper()
	select {
	case <-r.polls:
		t.Fatal("the device was polled while the flush could not complete")
	default:
	}
}

// A guest's FLUSH completes only once every write before it has been
// released (its epoch acknowledged) and flushed to the disk; until then it
// is refused, and the device is polled when it can complete.
func TestHeldDiskFlushWaitsForReleaseAndDurability(t *testing.T) {
	r := newHeldRig(t, 4096)
	if err := r.held.Flush(); err != nil {
		t.Fatalf("flush with nothing written: %v", err)
	}
	r.write(t, 0, "AAAA")
	r.pos.Store(2)
	r.write(t, 512, "BBBB")
	if err := r.held.Flush(); !errors.Is(err, vmm.ErrOutputFull) {
		t.Fatalf("flush with writes held: %v, want ErrOutputFull", err)
	}
	got := make([]byte, 1024)
	if _, err := r.held.ReadAt(got, 0); err != nil || string(got[:4]) != "AAAA" || string(got[512:516]) != "BBBB" {
		t.Fatalf("guest reads %q %q (%v) before release", got[:4], got[512:516], err)
	}
	if img := r.disk.Bytes(); img[0] != 0 {
		t.Fatal("a held write reached the disk before its epoch was acknowledged")
	}

	if err := r.out.Commit(1); err != nil {
		t.Fatal(err)
	}
	vmmtest.WaitUntil(t, "epoch 1's write durable", func() bool { return r.disk.Durable()[0] == 'A' })
	if err := r.held.Flush(); !errors.Is(err, vmm.ErrOutputFull) {
		t.Fatalf("flush with epoch 2 held: %v, want ErrOutputFull", err)
	}
	r.noPoll(t)

	if err := r.out.Commit(2); err != nil {
		t.Fatal(err)
	}
	r.waitPoll(t)
	if img := r.disk.Durable(); string(img[:4]) != "AAAA" || string(img[512:516]) != "BBBB" {
		t.Fatalf("polled, but the durable disk holds %q %q", img[:4], img[512:516])
	}
	if err := r.held.Flush(); err != nil {
		t.Fatalf("flush after every write is durable: %v", err)
	}
}

// A failed fdatasync fails the waiting FLUSH (once); the writes stay in
// the failover log, and a later flush that works makes them durable.
func TestHeldDiskFlushError(t *testing.T) {
	r := newHeldRig(t, 4096)
	boom := errors.New("EIO")
	r.disk.FailFlush(boom, false)
	r.write(t, 0, "AAAA")
	if err := r.held.Flush(); !errors.Is(err, vmm.ErrOutputFull) {
		t.Fatalf("flush: %v", err)
	}
	if err := r.out.Commit(1); err != nil {
		t.Fatal(err)
	}
	r.waitPoll(t)
	if err := r.held.Flush(); !errors.Is(err, boom) {
		t.Fatalf("flush after a failed fdatasync: %v, want %v", err, boom)
	}
	if d := r.held.Capture(2, true); len(d.Writes) != 1 || d.Durable != 0 {
		t.Fatalf("after a failed flush the log is %+v, want the write kept", d)
	}
	if err := r.held.Flush(); !errors.Is(err, vmm.ErrOutputFull) {
		t.Fatalf("flush retried: %v, want ErrOutputFull while it runs", err)
	}
	r.waitPoll(t)
	if err := r.held.Flush(); err != nil {
		t.Fatalf("flush after a working fdatasync: %v", err)
	}
	if d := r.held.Capture(2, true); len(d.Writes) != 0 || d.Durable != 2 {
		t.Fatalf("after the flush the log is %+v, want empty and durable through 2", d)
	}
	// The failed fdatasync dropped the write's dirty pages: durable only
	// if it was written again before the flush that succeeded.
	if got := string(r.disk.Durable()[:4]); got != "AAAA" {
		t.Fatalf("the disk holds %q durably, want the write a failed flush dropped", got)
	}
}

// While the disk keeps failing its flushes, released writes pile up in
// the failover log; once it is full, writes are refused (the guest waits)
// and accepted again after the disk comes back.
func TestHeldDiskFailoverLogIsBounded(t *testing.T) {
	r := newHeldRig(t, 1<<16)
	r.held.maxLog = 32 << 10
	boom := errors.New("EIO")
	r.disk.FailFlush(boom, true)
	block := bytes.Repeat([]byte{'x'}, 4096)
	refused := false
	for i := 0; i < 20 && !refused; i++ {
		r.pos.Store(uint64(i + 1))
		_, err := r.held.WriteAt(block, int64(i%16)*4096)
		switch {
		case errors.Is(err, vmm.ErrOutputFull):
			refused = true
		case err != nil:
			t.Fatal(err)
		default:
			if err := r.out.Commit(uint64(i + 1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !refused {
		t.Fatal("20 writes of 4 KiB with failing flushes all taken by a 32 KiB failover log")
	}
	r.disk.FailFlush(nil, false)
	vmmtest.WaitUntil(t, "writes taken again after the disk came back", func() bool {
		_, err := r.held.WriteAt(block, 0)
		if err != nil && !errors.Is(err, vmm.ErrOutputFull) {
			t.Fatal(err)
		}
		return err == nil
	})
}

// Capture gives each epoch's writes once, a sync everything not yet
// durable, and the epoch through which every write is durable.
func TestHeldDiskCapture(t *testing.T) {
	r := newHeldRig(t, 1<<16)
	r.write(t, 0, "e1a")
	r.write(t, 512, "e1b")
	d := r.held.Capture(1, false)
	r.pos.Store(2)
	if d.Durable != 0 || len(d.Writes) != 2 || d.Writes[0].Epoch != 1 || string(d.Writes[1].Data) != "e1b" {
		t.Fatalf("epoch 1: %+v", d)
	}
	r.write(t, 1024, "e2")
	d = r.held.Capture(2, false)
	r.pos.Store(3)
	if d.Durable != 0 || len(d.Writes) != 1 || d.Writes[0].Epoch != 2 {
		t.Fatalf("epoch 2: %+v", d)
	}
	if d = r.held.Capture(3, false); d.Durable != 0 || len(d.Writes) != 0 {
		t.Fatalf("epoch 3 without writes: %+v", d)
	}
	r.pos.Store(4)
	if err := r.out.Commit(1); err != nil {
		t.Fatal(err)
	}
	vmmtest.WaitUntil(t, "epoch 1 durable", func() bool { return r.held.Capture(4, true).Durable == 1 })
	d = r.held.Capture(4, true)
	if len(d.Writes) != 1 || string(d.Writes[0].Data) != "e2" {
		t.Fatalf("whole log after epoch 1 is durable: %+v", d)
	}
	r.pos.Store(5)
	if err := r.out.Commit(4); err != nil {
		t.Fatal(err)
	}
	vmmtest.WaitUntil(t, "every write durable", func() bool { return r.held.Capture(5, false).Durable == 5 })
}

// A device issuing random writes and flushes while acks arrive at random
// moments: every FLUSH that completes finds the durable disk equal to every
// write issued before it; failed fdatasyncs surface as errors, never as a
// completed FLUSH.
func TestHeldDiskFlushUnderConcurrentAcks(t *testing.T) {
	const size = 64 << 10
	r := newHeldRig(t, size)
	rng := rand.New(rand.NewSource(time.Now().UnixNano())) // the acker's
	wrng := rand.New(rand.NewSource(rng.Int63()))          // the device's
	model := make([]byte, size)
	stop := make(chan struct{})
	var acker sync.WaitGroup
	acker.Add(1)
	go func() { // the epoch loop and the ack reader
		defer acker.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(rng.Intn(300)) * time.Microsecond):
			}
			e := r.pos.Add(1) - 1
			if err := r.out.Commit(e); err != nil {
				t.Error(err)
				return
			}
			r.polls <- struct{}{} // the device's Wake at resume
		}
	}()
	flushes, failures := 0, 0
	for flushes < 300 {
		if wrng.Intn(4) > 0 {
			n := 1 + wrng.Intn(2048)
			off := int64(wrng.Intn(size - n))
			p := make([]byte, n)
			wrng.Read(p)
			for {
				_, err := r.held.WriteAt(p, off)
				if err == nil {
					break
				}
				if !errors.Is(err, vmm.ErrOutputFull) {
					t.Fatal(err)
				}
				<-r.polls
			}
			copy(model[off:], p)
			continue
		}
		if wrng.Intn(10) == 0 {
			r.disk.FailFlush(errors.New("EIO"), false)
		}
		for {
			err := r.held.Flush()
			if err == nil {
				break
			}
			if !errors.Is(err, vmm.ErrOutputFull) {
				failures++
				continue // the guest issues its FLUSH again
			}
			<-r.polls
		}
		flushes++
		if !bytes.Equal(r.disk.Durable(), model) {
			t.Fatalf("FLUSH %d completed but the durable disk lacks writes issued before it", flushes)
		}
	}
	close(stop)
	acker.Wait()
	t.Logf("%d flushes, %d failed fdatasyncs reported", flushes, failures)
}

// gatedFlushDisk is a MemDisk whose Flush says it began (entered) and
// waits for release; flushes counts the calls.
type gatedFlushDisk struct {
	*vmmtest.MemDisk
	entered, release chan struct{}
	flushes          atomic.Int32
}

func (d *gatedFlushDisk) Flush() error {
	d.flushes.Add(1)
	d.entered <- struct{}{}
	<-d.release
	return d.MemDisk.Flush()
}

// Close returns only once the background flush under way has ended, and
// no flush starts after it: the node closes the disk file next, which a
// flusher still running would fdatasync (the race detector caught that
// when a test crashed a primary).
func TestHeldDiskCloseWaitsForTheFlush(t *testing.T) {
	disk := &gatedFlushDisk{MemDisk: vmmtest.NewMemDisk(4096), entered: make(chan struct{}, 4), release: make(chan struct{})}
	var pos atomic.Uint64
	pos.Store(1)
	held := NewHeldDisk(disk, pos.Load)
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: okFence{}, Disk: held.Sink(), Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	held.Attach(out)
	write := func(s string) {
		t.Helper()
		if _, err := held.WriteAt([]byte(s), 0); err != nil {
			t.Fatal(err)
		}
		if err := out.Commit(pos.Load()); err != nil { // released: a flush is due
			t.Fatal(err)
		}
	}
	write("AAAA")
	vmmtest.Receive(t, "the background flush", disk.entered)
	closed := make(chan struct{})
	go func() { held.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while the flush was under way")
	case <-time.After(50 * time.Millisecond):
	}
	close(disk.release)
	vmmtest.Closed(t, "Close to return once the flush ended", closed)
	pos.Store(2)
	write("BBBB")
	if n := disk.flushes.Load(); n != 1 {
		t.Fatalf("%d flushes, want the one before Close", n)
	}
}
