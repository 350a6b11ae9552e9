package witness

import (
	"context"
	"errors"
	"sync"
	"testing"
)

// fenceOutputs is the Fence interface of package outbuf, restated so that
// this test breaks if Fence stops satisfying it.
type fenceOutputs interface{ Check(generation uint64) error }

var _ fenceOutputs = (*Fence)(nil)

func mustCheck(t *testing.T, f *Fence, g uint64, want error) {
	t.Helper()
	err := f.Check(g)
	if want == nil && err != nil {
		t.Fatalf("Check(%d) = %v, want nil", g, err)
	}
	if want != nil && !errors.Is(err, want) {
		t.Fatalf("Check(%d) = %v, want %v", g, err, want)
	}
}

func TestFenceLifecycle(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "primary")
	mustCheck(t, f, 1, ErrNotHeld)
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, f, 1, nil)
	mustCheck(t, f, 0, ErrNotHeld)
	mustCheck(t, f, 2, ErrNotHeld)

	// Lost peer: nothing passes until re-confirmed.
	f.Suspend()
	mustCheck(t, f, 1, ErrSuspended)
	if err := f.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, f, 1, nil)

	// A suspended fence cannot lift itself by re-winning what it holds.
	f.Suspend()
	if _, err := f.Acquire(ctx, 1); !errors.Is(err, ErrSuspended) {
		t.Fatalf("re-acquiring the held generation while suspended = %v", err)
	}
	mustCheck(t, f, 1, ErrSuspended)
	// Winning the next one does, and extends the tenure.
	if _, err := f.Acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, f, 1, nil)
	mustCheck(t, f, 2, nil)
	mustCheck(t, f, 3, ErrNotHeld)

	// The backup goes live at 3: the primary's confirm revokes it for good.
	if _, err := m.Acquire(ctx, 3, "backup"); err != nil {
		t.Fatal(err)
	}
	f.Suspend()
	if err := f.Confirm(ctx); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Confirm after the backup won 3 = %v", err)
	}
	mustCheck(t, f, 2, ErrRevoked)
	if _, err := f.Acquire(ctx, 4); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Acquire on a revoked fence = %v", err)
	}
	if n := m.Acquires(); n != 4 {
		t.Fatalf("arbiter saw %d acquires; a revoked fence must not ask", n)
	}
	if g, state := f.Held(); g != 2 || state != "revoked" {
		t.Fatalf("Held = %d, %s", g, state)
	}
}

func TestFenceObserve(t *testing.T) {
	ctx := context.Background()
	f := NewFence(NewMemory(), "p")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.Observe(Claim{Generation: 1, Owner: "p"})
	f.Observe(Claim{Generation: 0})
	mustCheck(t, f, 1, nil)
	f.Observe(Claim{Generation: 1, Owner: "q"})
	mustCheck(t, f, 1, ErrRevoked)

	g := NewFence(NewMemory(), "p")
	if _, err := g.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	g.Observe(Claim{Generation: 2, Owner: "p"}) // even our own name: we did not win 2 here
	mustCheck(t, g, 1, ErrRevoked)
}

func TestFenceLosingCandidate(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	if _, err := m.Acquire(ctx, 1, "other"); err != nil {
		t.Fatal(err)
	}
	f := NewFence(m, "me")
	if _, err := f.Acquire(ctx, 1); !errors.Is(err, ErrLost) {
		t.Fatalf("Acquire = %v, want lost", err)
	}
	mustCheck(t, f, 1, ErrNotHeld)
	// Losing as a candidate does not end the fence: it may win later.
	if _, err := f.Acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, f, 2, nil)
	mustCheck(t, f, 1, ErrNotHeld)
}

func TestFenceConfirmWhileUnreachable(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "p")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.Suspend()
	m.SetUnreachable(true)
	if err := f.Confirm(ctx); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Confirm while unreachable = %v", err)
	}
	mustCheck(t, f, 1, ErrSuspended)
}

// suspendingArbiter suspends the fence in the middle of Current, the race
// Confirm must lose: the second Suspend came after the read began.
type suspendingArbiter struct {
	*Memory
	f *Fence
}

func (a *suspendingArbiter) Current(ctx context.Context) (Claim, error) {
	a.f.Suspend()
	return a.Memory.Current(ctx)
}

func TestFenceConfirmOvertakenBySuspend(t *testing.T) {
	ctx := context.Background()
	a := &suspendingArbiter{Memory: NewMemory()}
	f := NewFence(a, "p")
	a.f = f
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	f.Suspend()
	if err := f.Confirm(ctx); !errors.Is(err, ErrSuspended) {
		t.Fatalf("Confirm overtaken by Suspend = %v", err)
	}
	mustCheck(t, f, 1, ErrSuspended)
}

func TestFenceArbiterWentBack(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "p")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	m2 := NewMemory() // the witness lost its state
	f.arb = m2
	if err := f.Confirm(ctx); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Confirm against a reset arbiter = %v", err)
	}
}

// TestFenceConcurrent hammers Check, Suspend, Confirm and Acquire from
// several goroutines (run with -race); at the end the fence must agree with
// the arbiter.
func TestFenceConcurrent(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "p")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 500 {
				switch (i + j) % 4 {
				case 0:
					_ = f.Check(1)
				case 1:
					f.Suspend()
				case 2:
					_ = f.Confirm(ctx)
				case 3:
					g, _ := f.Held()
					_, _ = f.Acquire(ctx, g+1)
				}
			}
		})
	}
	wg.Wait()
	cur, _ := m.Current(ctx)
	if g, state := f.Held(); g != cur.Generation || cur.Owner != "p" || state == "revoked" {
		t.Fatalf("fence holds %d (%s), arbiter says %v", g, state, cur)
	}
	f.Suspend()
	if err := f.Confirm(ctx); err != nil {
		t.Fatal(err)
	}
	mustCheck(t, f, cur.Generation, nil)
	mustCheck(t, f, 1, nil)
}

// A suspended fence's refusal says it may pass later (an output buffer keeps
// its outputs held); a revoked fence's never will.
func TestFenceRefusalIsTemporaryOnlyWhileSuspended(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "primary")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	temporary := func(err error) bool {
		var tmp interface{ Temporary() bool }
		return errors.As(err, &tmp) && tmp.Temporary()
	}
	f.Suspend()
	if err := f.Check(1); !errors.Is(err, ErrSuspended) || !temporary(err) {
		t.Fatalf("suspended Check = %v (temporary %v), want a temporary ErrSuspended", err, temporary(err))
	}
	if _, err := NewFence(m, "rival").Acquire(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Acquire(ctx, 2); err == nil {
		t.Fatal("the fence won a generation its rival holds")
	}
	if err := f.Check(1); !errors.Is(err, ErrRevoked) || temporary(err) {
		t.Fatalf("revoked Check = %v (temporary %v), want a final ErrRevoked", err, temporary(err))
	}
}
