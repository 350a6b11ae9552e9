package vmm

import (
	"errors"
	"sync"
)

// ErrOutputFull is what an output hook (a FrameSink, a Disk's WriteAt or
// Flush) returns to say "full, try later". The device then leaves the
// request in the available ring, unconsumed, and retries it on the next
// queue notify and whenever its Poll is called; it never blocks the vCPU.
var ErrOutputFull = errors.New("output full, try later")

// FrameSink is the single hook every frame the guest transmits goes
// through. The checkpoint and replay modes wrap the backend's sink to hold
// frames until the backup has acknowledged the state that produced them.
//
// SendFrame is called with the device's lock held, from a vCPU thread or
// from Poll; it must not block for long and must not call back into the
// device. frame is only valid during the call: a sink that keeps it copies
// it. ErrOutputFull means the frame was not taken and will be offered again;
// any other error drops the frame (counted by the device).
type FrameSink interface {
	SendFrame(frame []byte) error
}

// RxPort is where a network backend delivers received frames: a VirtioNet.
type RxPort interface {
	// Receive copies frame into the device's bounded host queue, without
	// touching guest memory or taking the device lock (so it may be called
	// from inside SendFrame). It returns false if the frame was dropped
	// (queue full or oversize), as a NIC drops.
	Receive(frame []byte) bool
	// Poll delivers queued frames into the guest's posted buffers, unless
	// the device is quiesced. It must not be called from inside SendFrame.
	Poll()
}

// NetBackend is a host network attachment: a FrameSink for the guest's
// output and a source of frames for its input.
type NetBackend interface {
	FrameSink
	// Start begins delivering received frames to port from the backend's
	// own goroutine (Receive, then Poll, for each frame).
	Start(port RxPort) error
	// Close stops the goroutine and releases the host resources.
	Close() error
}

// MaxFrame is the longest Ethernet frame (without FCS) the network devices
// and backends carry: a 1500-byte MTU. Longer frames are dropped.
const MaxFrame = 1514

// minFrame is the Ethernet header; shorter frames are dropped.
const minFrame = 14

// frameQueue is a bounded FIFO of host frames waiting for guest buffers. It
// is host state, not guest state: what waits here at a checkpoint is lost on
// failover, as frames in a NIC's FIFO are. mu protects everything.
type frameQueue struct {
	mu     sync.Mutex
	frames [][]byte
	max    int
	// free recycles buffers of delivered frames.
	free [][]byte
}

func (q *frameQueue) push(frame []byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) >= q.max {
		return false
	}
	var b []byte
	if n := len(q.free); n > 0 {
		b, q.free = q.free[n-1][:0], q.free[:n-1]
	}
	q.frames = append(q.frames, append(b, frame...))
	return true
}

// peek returns the oldest frame, or nil.
func (q *frameQueue) peek() []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) == 0 {
		return nil
	}
	return q.frames[0]
}

// pop removes the oldest frame.
func (q *frameQueue) pop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.frames) == 0 {
		return
	}
	if len(q.free) < q.max {
		q.free = append(q.free, q.frames[0])
	}
	q.frames[0] = nil
	q.frames = q.frames[1:]
}

func (q *frameQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.frames)
}
