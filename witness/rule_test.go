package witness

import (
	"context"
	"errors"
	"testing"
	"time"
)

// flakyArbiter is unreachable for its first failures Acquire calls, then
// passes them to Memory.
type flakyArbiter struct {
	*Memory
	failures int
	calls    int
}

func (a *flakyArbiter) Acquire(ctx context.Context, g uint64, owner string) (Claim, error) {
	a.calls++
	if a.calls <= a.failures {
		return Claim{}, ErrUnreachable
	}
	return a.Memory.Acquire(ctx, g, owner)
}

var fastBackoff = Backoff{Initial: time.Microsecond, Max: 10 * time.Microsecond}

func TestPrimaryLostBackupWins(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "primary")
	if _, err := f.Acquire(ctx, 3); !errors.Is(err, ErrLost) {
		t.Fatal("generation 3 on a fresh arbiter must be refused")
	}
	for g := uint64(1); g <= 3; g++ {
		if _, err := f.Acquire(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if err := PrimaryLostBackup(ctx, f); err != nil {
		t.Fatalf("PrimaryLostBackup = %v", err)
	}
	mustCheck(t, f, 4, nil)
	// The backup, asking for the generation after the one it knew, loses.
	b := NewFence(m, "backup")
	var lost *LostError
	if err := BackupLostPrimary(ctx, b, 3, fastBackoff); !errors.As(err, &lost) || lost.Holder.Owner != "primary" {
		t.Fatalf("backup after the primary went on alone = %v", err)
	}
	mustCheck(t, b, 4, ErrNotHeld)
}

func TestPrimaryLostBackupHaltsWhenUnreachable(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "primary")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	m.SetUnreachable(true)
	err := PrimaryLostBackup(ctx, f)
	if !errors.Is(err, ErrHalt) || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("PrimaryLostBackup with no arbiter = %v, want ErrHalt wrapping ErrUnreachable", err)
	}
	mustCheck(t, f, 1, ErrSuspended)
}

func TestPrimaryLostBackupHaltsWhenBackupWon(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f := NewFence(m, "primary")
	if _, err := f.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := BackupLostPrimary(ctx, NewFence(m, "backup"), 1, fastBackoff); err != nil {
		t.Fatal(err)
	}
	if err := PrimaryLostBackup(ctx, f); !errors.Is(err, ErrHalt) || !errors.Is(err, ErrLost) {
		t.Fatalf("PrimaryLostBackup after the backup went live = %v", err)
	}
	mustCheck(t, f, 1, ErrRevoked)
}

func TestBackupWaitsForArbiter(t *testing.T) {
	ctx := context.Background()
	a := &flakyArbiter{Memory: NewMemory(), failures: 5}
	if _, err := a.Memory.Acquire(ctx, 1, "primary"); err != nil {
		t.Fatal(err)
	}
	b := NewFence(a, "backup")
	if err := BackupLostPrimary(ctx, b, 1, fastBackoff); err != nil {
		t.Fatalf("BackupLostPrimary = %v", err)
	}
	if a.calls != 6 {
		t.Fatalf("backup asked %d times, want 5 failures then a win", a.calls)
	}
	mustCheck(t, b, 2, nil)
}

func TestBackupNeverGoesLiveWithoutArbiter(t *testing.T) {
	m := NewMemory()
	m.SetUnreachable(true)
	b := NewFence(m, "backup")
	ctx, cancel := context.WithCancel(context.Background())
	a := &cancelAfter{Memory: m, n: 10, cancel: cancel}
	b.arb = a
	err := BackupLostPrimary(ctx, b, 1, fastBackoff)
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("BackupLostPrimary with no arbiter = %v", err)
	}
	if a.calls < 10 {
		t.Fatalf("backup gave up after %d tries, before its context ended", a.calls)
	}
	mustCheck(t, b, 2, ErrNotHeld)
}

// cancelAfter cancels the caller's context on its n-th Acquire.
type cancelAfter struct {
	*Memory
	n, calls int
	cancel   func()
}

func (a *cancelAfter) Acquire(ctx context.Context, g uint64, owner string) (Claim, error) {
	a.calls++
	if a.calls == a.n {
		a.cancel()
	}
	return a.Memory.Acquire(ctx, g, owner)
}

func TestBackupStopsOnCorruption(t *testing.T) {
	a := &corruptArbiter{}
	err := BackupLostPrimary(context.Background(), NewFence(a, "b"), 1, fastBackoff)
	if !errors.Is(err, ErrCorrupt) || a.calls != 1 {
		t.Fatalf("BackupLostPrimary on a corrupt lease = %v after %d calls", err, a.calls)
	}
}

type corruptArbiter struct {
	Memory
	calls int
}

func (a *corruptArbiter) Acquire(context.Context, uint64, string) (Claim, error) {
	a.calls++
	return Claim{}, ErrCorrupt
}
