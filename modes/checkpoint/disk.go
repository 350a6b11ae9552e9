package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
)

// HeldDisk is a primary's guest disk (the vmm.Disk its virtio-blk device
// uses). It keeps three promises:
//
//   - Output commit: a write is held in the output buffer at the primary's
//     current epoch and reaches the disk when the backup acknowledges it;
//     reads see held writes (outbuf read-your-writes).
//   - Failover: every write is also kept, with its epoch, until it is
//     durable, so that each committing checkpoint can carry the writes the
//     backup must keep (DiskLog): those of the epoch, or after a sync all
//     not yet durable, and the epoch through which all are durable.
//   - FLUSH: a guest's flush completes only once every write before it has
//     been released and flushed to the disk. Until then Flush returns
//     vmm.ErrOutputFull, which leaves the request in the device's ring; the
//     poll function given to SetPoll is called when it can complete.
//
// Released writes are flushed in the background by one goroutine at a time
// (started on a release, ending when caught up), coalescing: a write is
// durable, and leaves the failover log, once an fdatasync after its release
// returned. A failed flush is reported to the guest's next FLUSH (I/O
// error); the writes stay in the failover log and the flush is tried again
// on the next release, write or FLUSH. After a failed fdatasync the kernel
// may have dropped the dirty pages it could not write, and a later
// fdatasync succeed without them, so before the next one every released
// write not yet durable is written to the disk again, in order.
//
// The failover log is bounded (maxPendingLog, inside what a sync
// commit's disk section may carry): while it is full, WriteAt refuses with
// vmm.ErrOutputFull, as when the output buffer is full, and the guest's
// writes wait for the disk to come back.
//
// Locking: wmu serialises WriteAt against Capture, so a capture never
// sees half a write; dmu serialises the disk's writes (releases, and the
// re-writes after a failed flush), so that an older write is never
// written after a newer one; mu protects the fields below it and is never
// held while the output buffer, the disk or the poll function runs. Order:
// wmu, then dmu, then mu.
type HeldDisk struct {
	out  *outbuf.Buffer // set by Attach
	disk vmm.Disk
	pos  func() uint64
	// trackers (TrackBlocks) are marked with every write once held.
	trackers []*dirtylog.Blocks

	wmu sync.Mutex
	dmu sync.Mutex

	mu sync.Mutex
	// pending holds every write not yet durable, in emission order: writes
	// numbered durable+1 .. held. Its entries are never modified, so a
	// capture may share their data.
	pending []format.DiskWrite
	// pendingLog is the size pending takes in a disk section, at most
	// maxLog.
	pendingLog, maxLog uint64
	// held counts writes held so far; released those the output buffer
	// handed to the disk; durable those an fdatasync covered since;
	// captured those already carried by an epoch capture.
	held, released, durable, captured uint64
	// rewrite is set when an fdatasync failed: the released writes not
	// yet durable must reach the disk again before the next one counts.
	rewrite bool
	// roomWait is set while a write was refused for a full failover log.
	roomWait bool
	// flushing is set while the flusher goroutine runs; flushers counts it
	// for Close. closed (Close) says no flusher starts any more.
	flushing, closed bool
	flushers         sync.WaitGroup
	// flushWait, if non-zero, is a FLUSH waiting for writes 1..flushWait
	// to be durable; flushErr is a failed flush for the next FLUSH.
	flushWait uint64
	flushErr  error
	poll      func()
}

// NewHeldDisk wraps disk, the shared disk, for a primary whose Position is
// pos. Build the output buffer with Sink() as its Env.Disk (that is how
// released writes reach disk), then Attach it, before the guest runs.
func NewHeldDisk(disk vmm.Disk, pos func() uint64) *HeldDisk {
	return &HeldDisk{disk: disk, pos: pos, maxLog: maxPendingLog}
}

// TrackBlocks returns a new log of the blocks (of block bytes) the guest
// writes, marked once a write is held, so that a read through h then
// returns it: a mirrored disk's full sync copies by one, --verify hashes
// by another. Call before the guest runs.
func (h *HeldDisk) TrackBlocks(block int64) *dirtylog.Blocks {
	t := dirtylog.NewBlocks(h.disk.Size(), block)
	h.trackers = append(h.trackers, t)
	return t
}

// Attach sets the output buffer that holds the writes; its Env.Disk must
// be Sink(). Call once, before the guest runs.
func (h *HeldDisk) Attach(out *outbuf.Buffer) { h.out = out }

// SetPoll sets the function called when a FLUSH refused with
// vmm.ErrOutputFull can complete: the virtio-blk device's Poll. Without it
// the device retries on its next notify or wake (every epoch's resume).
func (h *HeldDisk) SetPoll(poll func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.poll = poll
}

// Sink is the output buffer's Disk: released writes go through it to the
// disk, and are then flushed in the background.
func (h *HeldDisk) Sink() outbuf.Disk { return diskSink{h} }

// refuseWait is a done context: a Hold with it queues when there is room
// and is refused otherwise, so a device never blocks a vCPU (which would
// stop the pause that the awaited ack needs); the device retries.
var refuseWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// ReadAt implements vmm.Disk: the disk with the held writes over it.
func (h *HeldDisk) ReadAt(p []byte, off int64) (int, error) { return h.out.ReadAt(p, off) }

// WriteAt implements vmm.Disk: the write is held at the current epoch, or
// refused with vmm.ErrOutputFull while the output buffer is full.
func (h *HeldDisk) WriteAt(p []byte, off int64) (int, error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	pos := h.pos()
	// Recorded before it is held: once held, a release (immediate when the
	// primary runs alone) may count it.
	h.mu.Lock()
	if h.pendingLog+logSize(p) > h.maxLog {
		h.roomWait = true
		h.startFlusherLocked() // the disk may be back
		h.mu.Unlock()
		return 0, vmm.ErrOutputFull
	}
	h.pending = append(h.pending, format.DiskWrite{Epoch: pos, Off: off, Data: bytes.Clone(p)})
	h.pendingLog += logSize(p)
	h.held++
	h.mu.Unlock()
	if err := h.out.Hold(refuseWait, pos, outbuf.DiskWrite(p, off)); err != nil {
		h.mu.Lock()
		h.pending[len(h.pending)-1] = format.DiskWrite{}
		h.pending = h.pending[:len(h.pending)-1]
		h.pendingLog -= logSize(p)
		h.held--
		h.mu.Unlock()
		if errors.Is(err, context.Canceled) {
			return 0, vmm.ErrOutputFull
		}
		return 0, err
	}
	for _, t := range h.trackers {
		t.Mark(off, len(p))
	}
	return len(p), nil
}

// Flush implements vmm.Disk: nil once every write held so far is durable;
// vmm.ErrOutputFull until then (the poll function runs when that changes);
// the error of a failed background flush once.
func (h *HeldDisk) Flush() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.flushErr; err != nil {
		h.flushErr = nil
		return err
	}
	if h.durable == h.held {
		return nil
	}
	h.flushWait = h.held
	h.startFlusherLocked()
	return vmm.ErrOutputFull
}

// Size implements vmm.Disk.
func (h *HeldDisk) Size() int64 { return h.disk.Size() }

// Capture returns the disk log of the committing checkpoint of epoch,
// taken while the guest is paused: whole (every write not yet durable) for
// a sync commit, else the writes since the last capture. The log's slices
// are the caller's; the data is shared and never modified.
func (h *HeldDisk) Capture(epoch uint64, whole bool) format.DiskLog {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	d := format.DiskLog{Durable: epoch}
	if len(h.pending) > 0 {
		d.Durable = h.pending[0].Epoch - 1
	}
	from := 0
	if !whole {
		from = len(h.pending) - int(min(h.held-h.captured, uint64(len(h.pending))))
	}
	d.Writes = slices.Clone(h.pending[from:])
	h.captured = h.held
	return d
}

// diskSink is the output buffer's side of a HeldDisk.
type diskSink struct{ h *HeldDisk }

func (s diskSink) ReadAt(p []byte, off int64) (int, error) { return s.h.disk.ReadAt(p, off) }

// WriteAt writes a released write to the disk and has it flushed.
func (s diskSink) WriteAt(p []byte, off int64) (int, error) {
	h := s.h
	h.dmu.Lock()
	defer h.dmu.Unlock()
	n, err := h.disk.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	h.mu.Lock()
	h.released++
	h.startFlusherLocked()
	h.mu.Unlock()
	return n, nil
}

// startFlusherLocked starts the flusher if released writes are not yet
// durable, it is not running and h is not closed. Precondition: mu held.
func (h *HeldDisk) startFlusherLocked() {
	if !h.flushing && !h.closed && h.durable < h.released {
		h.flushing = true
		h.flushers.Add(1)
		go func() {
			defer h.flushers.Done()
			h.flushLoop()
		}()
	}
}

// Close waits for the background flush under way, if any, to end, and
// starts no other; the disk stays open. Call it once nothing releases
// writes any more (the primary's machine and run are over) and before the
// disk is closed: a flusher still running would fdatasync a closed file
// descriptor, or another file that took its number.
func (h *HeldDisk) Close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.flushers.Wait()
}

// flushLoop flushes the disk until every released write is durable, then
// ends. It pops durable writes from pending and wakes a waiting FLUSH, or
// a write refused while the failover log was full.
func (h *HeldDisk) flushLoop() {
	for {
		target, err := h.prepareFlush()
		if target == 0 {
			return
		}
		if err == nil {
			err = h.disk.Flush()
		}

		h.mu.Lock()
		wake := false
		if err != nil {
			h.flushErr = err
			h.rewrite = true
			wake = h.flushWait != 0
			h.flushWait = 0
			h.flushing = false
		} else {
			n := int(target - h.durable)
			for _, w := range h.pending[:n] {
				h.pendingLog -= logSize(w.Data)
			}
			clear(h.pending[:n])
			h.pending = h.pending[n:]
			h.durable = target
			if h.flushWait != 0 && h.durable >= h.flushWait {
				h.flushWait, wake = 0, true
			}
			if h.roomWait {
				h.roomWait, wake = false, true
			}
		}
		poll, stop := h.poll, err != nil
		h.mu.Unlock()
		if wake && poll != nil {
			poll()
		}
		if stop {
			return
		}
	}
}

// prepareFlush returns the count of released writes the next fdatasync
// will cover, or 0 (and the flusher ends) if every one is durable. After
// a failed fdatasync it first writes those not yet durable again; an error
// doing so is returned as the flush's.
func (h *HeldDisk) prepareFlush() (uint64, error) {
	h.dmu.Lock() // no release between the count and the re-writes
	defer h.dmu.Unlock()
	h.mu.Lock()
	target := h.released
	if h.durable >= target {
		h.flushing = false
		h.mu.Unlock()
		return 0, nil
	}
	var again []format.DiskWrite
	if h.rewrite {
		again = h.pending[:target-h.durable] // never modified; only this goroutine pops
		h.rewrite = false
	}
	h.mu.Unlock()
	for _, w := range again {
		if _, err := h.disk.WriteAt(w.Data, w.Off); err != nil {
			return target, fmt.Errorf("writing again a write of epoch %d after a failed flush: %w", w.Epoch, err)
		}
	}
	return target, nil
}

// maxPendingLog bounds the failover log, as the size of the disk section
// that would carry it whole: half of what a checkpoint may carry.
const maxPendingLog = format.MaxDiskLog / 2

// logSize is the size a write of p takes in a disk section.
func logSize(p []byte) uint64 { return format.DiskRecordSize(len(p)) }
