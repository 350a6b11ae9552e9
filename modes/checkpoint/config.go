package checkpoint

import (
	"errors"
	"fmt"
	"time"
)

// Config tunes a checkpoint-mode primary or backup. It is plain data.
type Config struct {
	// Epoch is the interval between checkpoints. With EpochAuto it is the
	// starting interval.
	Epoch time.Duration
	// EpochAuto adapts the interval to the dirty rate between MinEpoch and
	// MaxEpoch; see nextEpoch.
	EpochAuto          bool
	MinEpoch, MaxEpoch time.Duration
	// MaxInFlight bounds the checkpoints captured but not yet acknowledged;
	// the epoch loop waits (the guest runs on) before pausing for another.
	MaxInFlight int
	// PrecopyRounds bounds the rounds of a full sync made while the guest
	// runs (0: none, a stop-and-copy: the guest stays paused while all of
	// memory is copied); PrecopyDone ends them early once a round has at
	// most that many dirty pages.
	PrecopyRounds int
	PrecopyDone   int
	// Heartbeat is how often each side sends a heartbeat; FailureTimeout
	// how long silence from the peer means it is gone.
	Heartbeat      time.Duration
	FailureTimeout time.Duration
	// DecideTimeout bounds how long a primary that lost its backup may ask
	// the witness before it must halt.
	DecideTimeout time.Duration
	// CopyAfterResume says when a pause may write-protect its dirty pages
	// and resume the guest before they are copied (machine.CopyOnWriter)
	// instead of copying them: see CopyMode.
	CopyAfterResume CopyMode
	// Verify sends a hash of guest memory with every checkpoint, checked by
	// the backup after applying.
	Verify bool
	// MaxCheckpoint bounds a checkpoint message the backup accepts.
	MaxCheckpoint int
	// Machine describes this side's machine (vCPUs, devices) to the peer,
	// which refuses the connection unless its own is the same (see
	// format.Hello).
	Machine string
}

// CopyMode is where a pause's dirty pages are copied. Only a machine that
// can copy pages after it resumes (KVM's, where userfaultfd write
// protection works) defers; on others every mode copies in the pause.
type CopyMode int

const (
	// CopyAuto defers an epoch whose dirty pages come in runs long enough
	// (deferPays) when the pauses measure it cheaper (copyChoice).
	CopyAuto CopyMode = iota
	// CopyAlways defers every epoch whose dirty pages come in runs long
	// enough.
	CopyAlways
	// CopyNever copies every epoch's pages in the pause.
	CopyNever
)

var copyModeNames = [...]string{CopyAuto: "auto", CopyAlways: "always", CopyNever: "never"}

func (m CopyMode) String() string {
	if m < 0 || int(m) >= len(copyModeNames) {
		return fmt.Sprintf("CopyMode(%d)", int(m))
	}
	return copyModeNames[m]
}

// ParseCopyMode parses auto, always or never.
func ParseCopyMode(s string) (CopyMode, error) {
	for m, name := range copyModeNames {
		if s == name {
			return CopyMode(m), nil
		}
	}
	return 0, fmt.Errorf("%q: want auto, always or never", s)
}

// DefaultConfig is a 25 ms epoch with failure detection in 500 ms.
func DefaultConfig() Config {
	return Config{
		Epoch: 25 * time.Millisecond, MinEpoch: 5 * time.Millisecond, MaxEpoch: 500 * time.Millisecond,
		MaxInFlight: 4, PrecopyRounds: 5, PrecopyDone: 256, CopyAfterResume: CopyAuto,
		Heartbeat: 50 * time.Millisecond, FailureTimeout: 500 * time.Millisecond,
		DecideTimeout: 2 * time.Second, MaxCheckpoint: 1 << 30,
	}
}

// Validate says what is wrong with c, or nil.
func (c Config) Validate() error {
	var errs []error
	if c.Epoch <= 0 {
		errs = append(errs, fmt.Errorf("epoch %v: must be positive", c.Epoch))
	}
	if c.EpochAuto && (c.MinEpoch <= 0 || c.MaxEpoch < c.MinEpoch || c.Epoch < c.MinEpoch || c.Epoch > c.MaxEpoch) {
		errs = append(errs, fmt.Errorf("auto epoch bounds %v..%v with start %v: need 0 < min ≤ start ≤ max", c.MinEpoch, c.MaxEpoch, c.Epoch))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("max in flight %d: must be at least 1", c.MaxInFlight))
	}
	if c.PrecopyRounds < 0 || c.PrecopyDone < 0 {
		errs = append(errs, fmt.Errorf("pre-copy rounds %d, done threshold %d: must not be negative", c.PrecopyRounds, c.PrecopyDone))
	}
	if c.Heartbeat <= 0 || c.FailureTimeout <= c.Heartbeat {
		errs = append(errs, fmt.Errorf("heartbeat %v, failure timeout %v: need 0 < heartbeat < timeout", c.Heartbeat, c.FailureTimeout))
	}
	if c.DecideTimeout <= 0 {
		errs = append(errs, fmt.Errorf("decide timeout %v: must be positive", c.DecideTimeout))
	}
	if c.CopyAfterResume < CopyAuto || c.CopyAfterResume > CopyNever {
		errs = append(errs, fmt.Errorf("copy after resume %v: want auto, always or never", c.CopyAfterResume))
	}
	if c.MaxCheckpoint < 1<<20 {
		errs = append(errs, fmt.Errorf("max checkpoint %d bytes: at least 1 MiB", c.MaxCheckpoint))
	}
	return errors.Join(errs...)
}

// nextEpoch is the --epoch auto policy: after a checkpoint of dirty pages
// out of total, halve the interval when more than 1/64 of memory (or 16,384
// pages) was dirtied — a long epoch would mean a long pause — and grow it by
// half when fewer than 64 pages were: an idle guest needs few checkpoints,
// and its outputs wait at most an epoch. Within [MinEpoch, MaxEpoch].
func (c Config) nextEpoch(cur time.Duration, dirty, total uint64) time.Duration {
	if !c.EpochAuto {
		return c.Epoch
	}
	high := min(total/64, 16384)
	switch {
	case dirty > high:
		cur /= 2
	case dirty < 64:
		cur += cur / 2
	}
	return max(c.MinEpoch, min(c.MaxEpoch, cur))
}
