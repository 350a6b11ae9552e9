package replay

import (
	"errors"
	"fmt"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// Config tunes replay mode. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	// BatchBytes is the size at which the primary ships the log batch it is
	// filling; FlushInterval the longest an entry waits in it. A batch is
	// also shipped at once whenever it holds the position of an output.
	BatchBytes    int
	FlushInterval time.Duration
	// MaxInFlight bounds the batches queued for the sender: when the link
	// or the backup falls behind, the primary's guest waits.
	MaxInFlight int
	// BackupQueueBytes bounds the log the backup has received but not yet
	// replayed; beyond it the backup stops reading and TCP pushes back.
	BackupQueueBytes int
	// MaxLandingHits bounds how often the backup may reach a landing's RIP
	// without its signature matching before it declares divergence.
	MaxLandingHits int
	// LandingDelay is how long a due interrupt (timer, received frame) may
	// wait for the guest's next synchronous exit before the primary kicks
	// the guest out to deliver it. An interrupt delivered at a kick is a
	// landing, which the backup reaches by stopping at its RIP until the
	// signature matches — costly in a loop; one delivered at an exit costs
	// nothing extra. Zero kicks at once.
	LandingDelay time.Duration
	// RxQueue bounds the received frames waiting for the primary's next
	// boundary; more are dropped, as a NIC drops.
	RxQueue int
	// Heartbeat is the interval of heartbeats each way; FailureTimeout the
	// silence after which the peer is considered lost; DecideTimeout how
	// long the witness may take to decide.
	Heartbeat, FailureTimeout, DecideTimeout time.Duration
	// MaxCheckpoint bounds a full-sync checkpoint message.
	MaxCheckpoint int
	// A backup attaching to a running primary gets its full checkpoint by
	// pre-copy while the guest runs: a pass over all memory, then passes
	// over what was written meanwhile, PrecopyChunk pages at each of the
	// engine's boundaries, until a pass finds at most PrecopyDone pages or
	// PrecopyRounds passes were made; the rest goes in a final stop. On a
	// first pass compared with the backup's hashes a message also takes
	// the pages the backup has, kept, until PrecopyChunk go with data or it
	// has spent PrecopyCompare comparing (the guest is stopped meanwhile).
	PrecopyRounds, PrecopyDone, PrecopyChunk int
	PrecopyCompare                           time.Duration
	// Verify adds a SHA-256 of all guest memory to every full checkpoint
	// (and, with a mirrored disk, one of each 256 KiB of the disk); the
	// backup checks them after applying. It costs a pass over memory (and
	// the disk) on both sides.
	Verify bool
	// Machine describes this side's machine (kind, devices) to the peer,
	// which refuses the connection unless its own is the same (see
	// format.Hello).
	Machine string
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		BatchBytes: 64 << 10, FlushInterval: time.Millisecond, MaxInFlight: 64,
		BackupQueueBytes: 16 << 20, MaxLandingHits: 1 << 20, RxQueue: 256, LandingDelay: time.Millisecond,
		Heartbeat: 50 * time.Millisecond, FailureTimeout: time.Second, DecideTimeout: 5 * time.Second,
		MaxCheckpoint: format.DefaultMaxCheckpoint,
		PrecopyRounds: 5, PrecopyDone: 256, PrecopyChunk: 256, PrecopyCompare: time.Millisecond,
	}
}

// Validate says what is wrong with c, or nil.
func (c Config) Validate() error {
	var errs []error
	check := func(bad bool, f string, args ...any) {
		if bad {
			errs = append(errs, fmt.Errorf(f, args...))
		}
	}
	check(c.BatchBytes < 1<<10 || c.BatchBytes > MaxBatch/2, "batch of %d bytes: must be 1 KiB to %d", c.BatchBytes, MaxBatch/2)
	check(c.FlushInterval <= 0, "flush interval %v: must be positive", c.FlushInterval)
	check(c.MaxInFlight < 1, "max in flight %d: must be at least 1", c.MaxInFlight)
	check(c.BackupQueueBytes < MaxBatch, "backup queue of %d bytes: must hold at least one batch (%d)", c.BackupQueueBytes, MaxBatch)
	check(c.LandingDelay < 0 || c.LandingDelay > time.Second, "landing delay %v: must be 0 to 1s", c.LandingDelay)
	check(c.MaxLandingHits < 1, "max landing hits %d: must be at least 1", c.MaxLandingHits)
	check(c.RxQueue < 1, "rx queue %d: must be at least 1", c.RxQueue)
	check(c.PrecopyRounds < 1 || c.PrecopyDone < 0, "pre-copy rounds %d, done threshold %d: want at least 1 round and a threshold of 0 or more", c.PrecopyRounds, c.PrecopyDone)
	check(c.PrecopyChunk < 1, "pre-copy chunk of %d pages: must be at least 1", c.PrecopyChunk)
	check(c.PrecopyCompare <= 0, "pre-copy compare time %v: must be positive", c.PrecopyCompare)
	check(c.Heartbeat <= 0, "heartbeat %v: must be positive", c.Heartbeat)
	check(c.FailureTimeout < 2*c.Heartbeat, "failure timeout %v: must be at least two heartbeats (%v)", c.FailureTimeout, 2*c.Heartbeat)
	check(c.DecideTimeout <= 0, "decide timeout %v: must be positive", c.DecideTimeout)
	check(c.MaxCheckpoint <= 0, "max checkpoint %d: must be positive", c.MaxCheckpoint)
	return errors.Join(errs...)
}
