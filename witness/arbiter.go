package witness

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"
)

// MaxOwnerLen bounds an owner name in bytes. The disk lease stores the owner
// in a fixed-size field, and every arbiter enforces the same bound so that a
// name accepted by one is accepted by all.
const MaxOwnerLen = 64

// Claim is a holder of a generation: Owner won Generation at the arbiter.
// The zero Claim means no generation has ever been won.
type Claim struct {
	Generation uint64 `json:"generation"`
	Owner      string `json:"owner"`
}

// String formats a claim for logs and errors.
func (c Claim) String() string {
	if c.Generation == 0 {
		return "no holder"
	}
	return fmt.Sprintf("generation %d held by %q", c.Generation, c.Owner)
}

// Arbiter decides which candidate is primary. Generations rise by one on
// every failover, and exactly one candidate ever wins each generation.
//
// Every implementation is safe for concurrent use by several goroutines, and
// several processes (or hosts) may use arbiters naming the same witness.
type Arbiter interface {
	// Acquire asks for generation g on behalf of owner. It wins iff the
	// generation currently held is g-1 (or zero, for g = 1), or if owner
	// already holds g (a retried Acquire whose first answer was lost wins
	// again, so retries are safe).
	//
	// The returned Claim is the holder after the call. The error is nil iff
	// the caller won; then Claim is {g, owner}. Otherwise the error is one of:
	//   - a *LostError (errors.Is ErrLost): someone else holds g or a later
	//     generation, or g skips generations; Claim and the error name the holder;
	//   - an error wrapping ErrUnreachable: the arbiter could not decide (no
	//     quorum, disk or network down, ctx expired); the outcome is unknown,
	//     and retrying with the same (g, owner) is safe;
	//   - an error wrapping ErrCorrupt: the disk lease is damaged; an operator
	//     must look at it;
	//   - an error wrapping ErrInvalid: g is zero or owner is empty or too long.
	Acquire(ctx context.Context, g uint64, owner string) (Claim, error)

	// Current returns the holder as the arbiter knows it now (linearizable:
	// it reflects every Acquire that returned before Current was called).
	// Errors are as for Acquire, without ErrLost.
	Current(ctx context.Context) (Claim, error)

	// Close releases the arbiter's resources. It does not give up a claim:
	// claims are never released, only superseded by the next generation.
	Close() error
}

var (
	// ErrLost means another candidate holds the generation asked for, or a
	// later one. The concrete error is a *LostError naming the holder.
	ErrLost = errors.New("generation lost to another candidate")
	// ErrUnreachable means the arbiter could not be reached or could not
	// decide (for the raft witness: no quorum). The outcome is unknown.
	ErrUnreachable = errors.New("arbiter unreachable")
	// ErrCorrupt means the lease block failed verification. It is never
	// overwritten: a person must decide what the damaged block held.
	ErrCorrupt = errors.New("lease block corrupt")
	// ErrInvalid means the request itself is malformed.
	ErrInvalid = errors.New("invalid arbiter request")
)

// LostError is returned by Acquire to a candidate that did not win.
type LostError struct {
	Want   Claim // what the candidate asked for
	Holder Claim // the holder when the arbiter decided
}

func (e *LostError) Error() string {
	if e.Holder.Generation < e.Want.Generation {
		return fmt.Sprintf("%q cannot take generation %d: it skips generations (%s)",
			e.Want.Owner, e.Want.Generation, e.Holder)
	}
	return fmt.Sprintf("%q lost generation %d: %s", e.Want.Owner, e.Want.Generation, e.Holder)
}

// Is makes errors.Is(err, ErrLost) true for a *LostError.
func (e *LostError) Is(target error) bool { return target == ErrLost }

// validateRequest checks the arguments of Acquire; every arbiter calls it
// first so they all reject the same requests.
func validateRequest(g uint64, owner string) error {
	switch {
	case g == 0:
		return fmt.Errorf("%w: generation 0 is not a generation (the first is 1)", ErrInvalid)
	case owner == "":
		return fmt.Errorf("%w: empty owner", ErrInvalid)
	case len(owner) > MaxOwnerLen:
		return fmt.Errorf("%w: owner is %d bytes, at most %d allowed", ErrInvalid, len(owner), MaxOwnerLen)
	case !utf8.ValidString(owner):
		return fmt.Errorf("%w: owner is not valid UTF-8", ErrInvalid)
	}
	return nil
}

// decide is the compare-and-set every arbiter applies to its stored holder:
// it returns the holder after a request for (g, owner) and whether the
// request won. It is pure, so the raft FSM, the disk lease and the memory
// arbiter cannot disagree.
func decide(cur Claim, g uint64, owner string) (next Claim, won bool) {
	switch {
	case cur.Generation+1 == g:
		return Claim{Generation: g, Owner: owner}, true
	case cur.Generation == g && cur.Owner == owner:
		return cur, true
	default:
		return cur, false
	}
}

// outcome turns the result of decide into Acquire's return values.
func outcome(holder Claim, won bool, g uint64, owner string) (Claim, error) {
	if won {
		return holder, nil
	}
	return holder, &LostError{Want: Claim{Generation: g, Owner: owner}, Holder: holder}
}
