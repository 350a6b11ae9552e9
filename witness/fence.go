package witness

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Fence errors: Check returns an error wrapping one of these.
var (
	// ErrNotHeld means the fence has never won a generation, or the
	// generation checked is outside the fence's tenure.
	ErrNotHeld = errors.New("generation not held")
	// ErrSuspended means the mode lost its peer and the fence has not yet
	// re-confirmed its generation or won the next one.
	ErrSuspended = errors.New("fence suspended")
	// ErrRevoked means a later generation (or another owner of ours) was
	// seen: this fence will never pass a check again.
	ErrRevoked = errors.New("fence revoked")
)

// temporaryError is a refusal that may turn into a pass: a suspended fence
// becomes valid again if its holder re-confirms or wins the next
// generation. Its Temporary method tells an output buffer to keep the
// outputs held rather than fail (see outbuf.Fence).
type temporaryError struct{ error }

func (e temporaryError) Temporary() bool { return true }
func (e temporaryError) Unwrap() error   { return e.error }

// fenceState is where a Fence is in its life. The zero value is invalid.
//
//	idle ──Acquire won──▶ valid ◀──Confirm / Acquire won── suspended
//	                        │ ──────────Suspend──────────▶     │
//	                        └────── higher generation seen ────┴──▶ revoked (final)
type fenceState int

const (
	fenceInvalid fenceState = iota
	fenceIdle
	fenceValid
	fenceSuspended
	fenceRevoked
)

func (s fenceState) String() string {
	switch s {
	case fenceIdle:
		return "idle"
	case fenceValid:
		return "valid"
	case fenceSuspended:
		return "suspended"
	case fenceRevoked:
		return "revoked"
	}
	return fmt.Sprintf("invalid fence state %d", int(s))
}

// Fence is what a mode holds to fence its output release paths: it
// implements outbuf's Fence interface (Check). It is valid after the mode
// wins a generation through it; Suspend makes it fail until it re-confirms
// with the arbiter (Confirm) or wins the next generation (Acquire); it is
// revoked for good once a higher generation, or our generation under another
// owner, is seen.
//
// The tenure of a fence is the range of generations it has held without a
// break: winning g+1 while holding g (valid or suspended) extends it, so
// outputs this primary produced under g may still be released under g+1.
//
// Locking: mu protects every mutable field. It is never held across a call
// to the arbiter, so Check and Suspend never wait for the network; the
// result of an arbiter call is applied afterwards under mu, and a Confirm
// that was overtaken by a Suspend does not re-validate the fence.
// All methods are safe for concurrent use.
type Fence struct {
	arb   Arbiter
	owner string

	mu       sync.Mutex
	state    fenceState
	since    uint64 // first generation of the tenure (valid, suspended)
	held     uint64 // last generation won (valid, suspended)
	suspends uint64 // number of Suspend calls that took effect
	seen     Claim  // for revoked: the claim that revoked the fence
	// inflight counts this fence's Acquire calls waiting on the arbiter, by
	// generation: a claim of ours seen meanwhile is one of them, not a rival.
	inflight map[uint64]int
}

// NewFence returns an idle fence that acquires generations from arb on
// behalf of owner.
func NewFence(arb Arbiter, owner string) *Fence {
	return &Fence{arb: arb, owner: owner, state: fenceIdle, inflight: map[uint64]int{}}
}

// Owner returns the name the fence acquires under.
func (f *Fence) Owner() string { return f.owner }

// Held returns the generation last won (0 if none) and the fence's state
// ("idle", "valid", "suspended" or "revoked"), for logs and decisions.
func (f *Fence) Held() (generation uint64, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held, f.state.String()
}

// Check returns nil iff outputs produced under generation g may be released
// now: the fence is valid and g is within its tenure.
func (f *Fence) Check(g uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch f.state {
	case fenceValid:
		if g < f.since || g > f.held {
			return fmt.Errorf("output of generation %d: %w (this primary holds %d..%d)", g, ErrNotHeld, f.since, f.held)
		}
		return nil
	case fenceSuspended:
		return temporaryError{fmt.Errorf("output of generation %d: %w: peer lost, generation %d not re-confirmed", g, ErrSuspended, f.held)}
	case fenceRevoked:
		return fmt.Errorf("output of generation %d: %w by %s", g, ErrRevoked, f.seen)
	case fenceIdle:
		return fmt.Errorf("output of generation %d: %w: no generation won yet", g, ErrNotHeld)
	}
	panic(fmt.Sprintf("witness: Check on fence in %v", f.state))
}

// Suspend stops every release at once: the mode has lost its peer. It has
// no effect on an idle or revoked fence.
func (f *Fence) Suspend() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state == fenceValid || f.state == fenceSuspended {
		f.state = fenceSuspended
		f.suspends++
	}
}

// Acquire asks the arbiter for generation g under the fence's owner (see
// Arbiter.Acquire for the results). On a win the fence becomes valid for g;
// on a loss to a later generation it is revoked if it held one. A revoked
// fence refuses without asking.
func (f *Fence) Acquire(ctx context.Context, g uint64) (Claim, error) {
	f.mu.Lock()
	if f.state == fenceRevoked {
		defer f.mu.Unlock()
		return f.seen, fmt.Errorf("acquiring generation %d: %w by %s", g, ErrRevoked, f.seen)
	}
	f.inflight[g]++
	f.mu.Unlock()

	c, err := f.arb.Acquire(ctx, g, f.owner)

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inflight[g]--; f.inflight[g] == 0 {
		delete(f.inflight, g)
	}
	if err != nil {
		if errors.Is(err, ErrLost) {
			f.observeLocked(c)
		}
		return c, err
	}
	if f.state == fenceRevoked {
		return c, fmt.Errorf("won generation %d but %w by %s meanwhile", g, ErrRevoked, f.seen)
	}
	if f.state != fenceIdle && g <= f.held {
		// A repeated win of a generation already held excludes no one
		// from the next one, so it cannot lift a suspension.
		if f.state == fenceSuspended {
			return c, fmt.Errorf("generation %d already held: %w; resume with Confirm or by winning %d", g, ErrSuspended, f.held+1)
		}
		return c, nil
	}
	switch {
	case f.state == fenceIdle:
		f.since = g
	case g > f.held+1:
		// Not continuous: an arbiter never lets a holder skip, but do not
		// let a tenure span generations someone else may have held.
		f.since = g
	}
	if g > f.held {
		f.held = g
	}
	f.state = fenceValid
	return c, nil
}

// Confirm re-validates a suspended fence after the peer is back: it reads
// the arbiter, and if the fence's generation is still the current one it
// becomes valid again. A later generation revokes it. Confirm is only safe
// when releases are again gated on the peer's acknowledgements; a primary
// that goes on alone must win the next generation (Acquire) instead, so the
// backup cannot win it too (see PrimaryLostBackup).
//
// If Suspend is called while Confirm waits for the arbiter, the fence stays
// suspended and Confirm returns an error wrapping ErrSuspended.
func (f *Fence) Confirm(ctx context.Context) error {
	f.mu.Lock()
	if f.state != fenceSuspended && f.state != fenceValid {
		defer f.mu.Unlock()
		return fmt.Errorf("confirming fence: nothing to confirm, fence is %v", f.state)
	}
	seq, held := f.suspends, f.held
	f.mu.Unlock()

	cur, err := f.arb.Current(ctx)
	if err != nil {
		return fmt.Errorf("confirming generation %d: %w", held, err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.observeLocked(cur); f.state == fenceRevoked {
		return fmt.Errorf("confirming generation %d: %w by %s", held, ErrRevoked, f.seen)
	}
	if f.held != held || (cur.Owner == f.owner && f.inflight[cur.Generation] > 0) {
		return fmt.Errorf("confirming generation %d: an Acquire of this fence moved it to %s meanwhile; confirm again if still needed", held, cur)
	}
	if cur.Generation != f.held || cur.Owner != f.owner {
		// The witness lost generations it had granted (a lease file
		// replaced, a cluster rebuilt): nothing it says can be trusted.
		f.revokeLocked(cur)
		return fmt.Errorf("confirming generation %d: arbiter went back to %s: %w", held, cur, ErrRevoked)
	}
	if f.suspends != seq {
		return fmt.Errorf("confirming generation %d: %w again while confirming", held, ErrSuspended)
	}
	f.state = fenceValid
	return nil
}

// Observe tells the fence about a claim seen elsewhere (a peer's message, a
// stream header). A later generation, or our generation under another
// owner, revokes the fence; anything else is ignored.
func (f *Fence) Observe(c Claim) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.observeLocked(c)
}

// observeLocked revokes a holding fence that c supersedes.
// Precondition: f.mu is held.
func (f *Fence) observeLocked(c Claim) {
	if f.state != fenceValid && f.state != fenceSuspended {
		return
	}
	if c.Owner == f.owner && f.inflight[c.Generation] > 0 {
		return
	}
	if c.Generation > f.held || (c.Generation == f.held && c.Owner != f.owner) {
		f.revokeLocked(c)
	}
}

// revokeLocked ends the fence for good. Precondition: f.mu is held.
func (f *Fence) revokeLocked(c Claim) {
	f.state = fenceRevoked
	f.seen = c
}
