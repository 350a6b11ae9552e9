package checkpoint

import (
	"sync"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/session"
	"github.com/ftckpt/ftckpt/vmm"
)

// A backup describes what it holds by range hashes, and a full sync's
// first round leaves out, as KEPT, what the backup has (modes/session).
// On one connection the hashes come in series, each named by what asked
// for it (format.HashesFor): the primary's Hello asks for the first sync's
// (a joining backup's), and each later sync asks again in its first
// message (FlagSendHashes), since the sync before changed what the backup
// holds. The backup hashes a series once the message asking for it is
// applied; until that sync commits, what it holds changes only by that
// sync's messages, and a range's only after the primary has its hash. So
// the primary compares a sync with the series named by it only
// (backupHashes), and a series the backup halted, or that comes after its
// sync's first round, is dropped.

// hashSender sends a backup's range hashes on one connection, one series
// at a time: starting one halts the one under way, whose ranges not yet
// hashed would describe what the new sync's messages change. Used by the
// backup's receiver only.
type hashSender struct {
	l       *format.Link
	timeout time.Duration // as Link.Send's
	// image and memory are what the primary's Hello asked for: the disk
	// image (nil if not asked), the guest memory (nil if not), hashed
	// holding memMu (the receiver holds it while it applies a checkpoint).
	image  vmm.Disk
	memory []byte
	memMu  *sync.Mutex
	// fail ends the connection with an error of a series.
	fail func(error)
	// stop is the series under way's (nil if none); running counts the
	// series' goroutines.
	stop    chan struct{}
	running sync.WaitGroup
}

// start halts the series under way and starts series f: the image's
// hashes if the primary asked for them, the memory's if it asked for them
// and withMemory (the Hello's series goes only if the backup offered it).
func (s *hashSender) start(f format.HashesFor, withMemory bool) {
	s.halt()
	stop := make(chan struct{})
	s.stop = stop
	send := func(hash func() error) {
		s.running.Add(1)
		go func() {
			defer s.running.Done()
			if err := hash(); err != nil {
				s.fail(err)
			}
		}()
	}
	if s.image != nil {
		send(func() error { return session.SendImageHashes(s.l, f, s.image, s.image.Size(), s.timeout, stop) })
	}
	if s.memory != nil && withMemory {
		send(func() error { return session.SendMemoryHashes(s.l, f, s.memory, s.memMu, s.timeout, stop) })
	}
}

// halt halts the series under way, if any.
func (s *hashSender) halt() {
	if s.stop != nil {
		close(s.stop)
		s.stop = nil
	}
}

// wait waits until every series has ended (halt first; a series blocked
// sending ends once the link is closed).
func (s *hashSender) wait() { s.running.Wait() }

// backupHashes is what a primary knows of its backup's image and memory
// for one sync's first round: the range hashes of series For, image or
// memory nil where that is not compared. The receiver adds to it; the
// sync's pre-copy compares.
type backupHashes struct {
	For    format.HashesFor
	image  *session.BackupImage
	memory *session.BackupMemory
}
