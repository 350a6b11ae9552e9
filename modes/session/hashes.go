package session

import (
	"io"
	"sync"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// A backup describes what it holds by range hashes, and a full sync's
// first pass leaves out, as KEPT, what the backup has (image.go,
// memory.go). On one connection the hashes come in series, each named by
// what asked for it (format.HashesFor): the primary's Hello asks for the
// first sync's (a joining backup's), and a later sync asks again in its
// first message (FlagSendHashes), since the sync before changed what the
// backup holds. The backup hashes a series once the message asking for it
// is applied; until that sync commits, what it holds changes only by that
// sync's messages, and a range's only after the primary has its hash. So
// the primary compares a sync with the series named by it only
// (CurrentHashes), and a series the backup halted, or that comes after its
// sync's first pass, is dropped.

// Image is a backup's disk image, as HashSender reads it.
type Image interface {
	io.ReaderAt
	Size() int64
}

// HashSender sends a backup's range hashes on one connection, one series
// at a time: starting one halts the one under way, whose ranges not yet
// hashed would describe what the new sync's messages change. Its methods
// are called from one goroutine.
type HashSender struct {
	l       *format.Link
	timeout time.Duration // as Link.Send's
	image   Image
	memory  []byte
	memMu   sync.Locker
	fail    func(error)
	// stop is the series under way's (nil if none); running counts the
	// series' goroutines.
	stop    chan struct{}
	running sync.WaitGroup
}

// NewHashSender returns a HashSender on l of this backup's disk image (nil
// if it has none) and guest memory, each only if the primary's Hello
// (peer) asked for its hashes; memory is hashed holding memMu (which the
// backup holds while it applies a checkpoint). fail is told of an error of
// a series not halted (reading the image, sending), which should end the
// connection.
func NewHashSender(l *format.Link, peer format.Hello, timeout time.Duration, image Image, memory []byte, memMu sync.Locker, fail func(error)) *HashSender {
	s := &HashSender{l: l, timeout: timeout, memMu: memMu, fail: fail}
	if peer.WantImageHashes {
		s.image = image
	}
	if peer.WantMemoryHashes {
		s.memory = memory
	}
	return s
}

// Start halts the series under way and starts series f: the image's
// hashes if the primary asked for them, the memory's if it asked for them
// and withMemory (the Hello's series goes only if the backup offered it).
func (s *HashSender) Start(f format.HashesFor, withMemory bool) {
	s.Halt()
	stop := make(chan struct{})
	s.stop = stop
	send := func(hash func() error) {
		s.running.Add(1)
		go func() {
			defer s.running.Done()
			if err := hash(); err != nil {
				select {
				case <-stop: // halted: the link is closing, or the series is not wanted
				default:
					s.fail(err)
				}
			}
		}()
	}
	if s.image != nil {
		send(func() error { return SendImageHashes(s.l, f, s.image, s.image.Size(), s.timeout, stop) })
	}
	if s.memory != nil && withMemory {
		send(func() error { return SendMemoryHashes(s.l, f, s.memory, s.memMu, s.timeout, stop) })
	}
}

// Halt halts the series under way, if any.
func (s *HashSender) Halt() {
	if s.stop != nil {
		close(s.stop)
		s.stop = nil
	}
}

// Wait waits until every series has ended (Halt first; a series blocked
// sending ends once the link is closed).
func (s *HashSender) Wait() { s.running.Wait() }

// Hashes is what a primary knows of one series of its backup's range
// hashes: the image's and the memory's, each nil where the sync does not
// compare it. The receiver adds to it (CurrentHashes); the sync's first
// pass compares.
type Hashes struct {
	For    format.HashesFor
	Image  *BackupImage
	Memory *BackupMemory
}

// CurrentHashes is the series the sync under way compares with, if any.
// Safe for concurrent use: the primary sets it, its receiver adds to it.
type CurrentHashes struct{ p atomic.Pointer[Hashes] }

// Set makes h (nil: none) the series hashes are added to; hashes of any
// other series are dropped from now on.
func (c *CurrentHashes) Set(h *Hashes) { c.p.Store(h) }

// Get returns the current series, nil if none.
func (c *CurrentHashes) Get() *Hashes { return c.p.Load() }

// AddImage adds h to the current series if it is of it and compares the
// image; it drops it otherwise (a series the backup halted, or one whose
// sync's first pass is over).
func (c *CurrentHashes) AddImage(h format.ImageHashes) error {
	if s := c.p.Load(); s != nil && s.For == h.For && s.Image != nil {
		return s.Image.Add(h)
	}
	return nil
}

// AddMemory is AddImage for the backup's memory hashes.
func (c *CurrentHashes) AddMemory(h format.MemoryHashes) error {
	if s := c.p.Load(); s != nil && s.For == h.For && s.Memory != nil {
		return s.Memory.Add(h)
	}
	return nil
}
