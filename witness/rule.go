package witness

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrHalt is wrapped by PrimaryLostBackup's error when the primary must
// stop releasing outputs and halt.
var ErrHalt = errors.New("primary must halt")

// Backoff is the waiting policy between retries: it starts at Initial and
// doubles up to Max. The zero Backoff uses DefaultBackoff.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// DefaultBackoff suits a witness on a LAN: an election takes a few hundred
// milliseconds, so retrying every 0.5 s at worst follows it closely.
var DefaultBackoff = Backoff{Initial: 20 * time.Millisecond, Max: 500 * time.Millisecond}

// next returns the wait after d (0 for the first wait).
func (b Backoff) next(d time.Duration) time.Duration {
	if b.Initial <= 0 || b.Max <= 0 {
		b = DefaultBackoff
	}
	if d <= 0 {
		return b.Initial
	}
	return min(2*d, b.Max)
}

// sleep waits d or until ctx ends, whichever is first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PrimaryLostBackup is the paper's rule for a primary whose backup stopped
// acknowledging. It suspends f at once, so nothing more is released, then
// asks the arbiter for the next generation within ctx (the caller bounds it:
// a primary may not wait long with the guest's outputs held).
//
// nil means the primary won the next generation: the backup can no longer
// win it, and the primary goes on alone with f valid. Any error wraps
// ErrHalt and says why (the arbiter is unreachable, or someone else won):
// the primary must stop releasing and halt.
func PrimaryLostBackup(ctx context.Context, f *Fence) error {
	f.Suspend()
	held, state := f.Held()
	if state != fenceSuspended.String() {
		return fmt.Errorf("%w: backup lost and the fence is %s (generation %d)", ErrHalt, state, held)
	}
	if _, err := f.Acquire(ctx, held+1); err != nil {
		return fmt.Errorf("%w: backup lost and generation %d not won: %w", ErrHalt, held+1, err)
	}
	return nil
}

// BackupLostPrimary is the paper's rule for a backup whose primary stopped
// sending: it asks for generation primaryGen+1 and, while the arbiter is
// unreachable, waits and asks again (with backoff b) until ctx ends. It never
// goes live without winning.
//
// nil means the backup won, f is valid for primaryGen+1, and the backup goes
// live. A *LostError (errors.Is ErrLost) means another candidate, usually
// the primary going on alone, won: do not go live. If ctx ends first the
// error wraps ErrUnreachable and ctx's error. ErrCorrupt and ErrInvalid are
// returned at once: waiting will not fix them.
func BackupLostPrimary(ctx context.Context, f *Fence, primaryGen uint64, b Backoff) error {
	g := primaryGen + 1
	var wait time.Duration
	for {
		_, err := f.Acquire(ctx, g)
		if err == nil || !errors.Is(err, ErrUnreachable) {
			return err
		}
		wait = b.next(wait)
		if serr := sleep(ctx, wait); serr != nil {
			return fmt.Errorf("backup waited for the arbiter to take generation %d: %w (last: %w)", g, serr, err)
		}
	}
}
