package outbuf

import (
	"io"
	"log/slog"
	"time"
)

// NetSink receives released network frames, one call per frame, in emission
// order, from one release pass at a time. Like io.Writer, it must not retain
// frame after returning: the buffer recycles it. A SendFrame error fails the
// buffer; a sink that prefers to lose a frame (as a NIC may) should return
// nil and count the loss itself.
type NetSink interface {
	SendFrame(frame []byte) error
}

// Disk is the guest's disk: released writes go to WriteAt, and
// [Buffer.ReadAt] reads through ReadAt before laying held writes over the
// result. As io.WriterAt requires, WriteAt must not retain p: the buffer
// recycles it. All of the guest's disk reads must go through the Buffer,
// never to the Disk directly, or they miss the guest's own held writes. A
// WriteAt error fails the buffer; the write stays held (and visible to
// reads).
type Disk interface {
	io.ReaderAt
	io.WriterAt
}

// Fence says whether a generation may still release outputs. witness.Fence
// implements it. Check is called before every release pass, from the
// goroutine doing the release, and must return a non-nil error unless
// generation is the current one and this process still holds it.
//
// A refusal fails the buffer for good, unless the error has a Temporary
// method that reports true (found with errors.As; witness.Fence's while it
// is suspended, deciding whether this primary goes on): then only this pass
// is refused, the outputs stay held, and the next pass asks again.
type Fence interface {
	Check(generation uint64) error
}

// Clock tells the time for output-delay statistics. It is injected so tests
// control it.
type Clock interface {
	Now() time.Time
}

// SystemClock is the Clock of the host.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// Env is what a Buffer talks to: everything that is not plain configuration.
type Env struct {
	// Generation is the generation won at the witness; outputs are released
	// only while Fence accepts it.
	Generation uint64
	// Fence is checked before every release pass. Required.
	Fence Fence
	// Net receives network frames; nil if the guest has no network device,
	// in which case holding a frame is an error.
	Net NetSink
	// Disk receives disk writes and serves reads; nil if the guest has no
	// disk, in which case holding a write is an error.
	Disk Disk
	// Clock times output delays. Required; SystemClock{} in production.
	Clock Clock
	// Logger reports release failures; nil means slog.Default().
	Logger *slog.Logger
}
