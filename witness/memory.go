package witness

import (
	"context"
	"fmt"
	"sync"
)

// Memory is an in-memory Arbiter for tests of the modes: one process, no
// persistence, with fault injection. Several goroutines may share one
// Memory; it behaves like a witness they all reach.
type Memory struct {
	mu          sync.Mutex // protects every field below
	holder      Claim
	unreachable bool
	acquires    int
}

// NewMemory returns a Memory arbiter with no holder.
func NewMemory() *Memory { return &Memory{} }

// SetUnreachable makes every later call fail with ErrUnreachable (true) or
// work again (false), as if the witness were cut off.
func (m *Memory) SetUnreachable(down bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unreachable = down
}

// Acquires reports how many Acquire calls reached the arbiter (decided
// either way), so tests can see that a candidate asked.
func (m *Memory) Acquires() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.acquires
}

// Acquire implements Arbiter.
func (m *Memory) Acquire(ctx context.Context, g uint64, owner string) (Claim, error) {
	if err := validateRequest(g, owner); err != nil {
		return Claim{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.reachable(ctx); err != nil {
		return Claim{}, fmt.Errorf("acquiring generation %d for %q: %w", g, owner, err)
	}
	m.acquires++
	next, won := decide(m.holder, g, owner)
	m.holder = next
	return outcome(next, won, g, owner)
}

// Current implements Arbiter.
func (m *Memory) Current(ctx context.Context) (Claim, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.reachable(ctx); err != nil {
		return Claim{}, fmt.Errorf("reading current holder: %w", err)
	}
	return m.holder, nil
}

// Close implements Arbiter; a Memory holds no resources.
func (m *Memory) Close() error { return nil }

// reachable reports why a call cannot proceed. Precondition: m.mu is held.
func (m *Memory) reachable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	if m.unreachable {
		return fmt.Errorf("%w: memory arbiter set unreachable", ErrUnreachable)
	}
	return nil
}
