package witness

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// checkArbiterContract runs the single-candidate rules every Arbiter obeys.
func checkArbiterContract(t *testing.T, a Arbiter) {
	t.Helper()
	ctx := context.Background()
	if c, err := a.Current(ctx); err != nil || c != (Claim{}) {
		t.Fatalf("fresh arbiter: Current = %v, %v; want no holder", c, err)
	}
	for _, bad := range []struct {
		g     uint64
		owner string
	}{{0, "a"}, {1, ""}, {1, strings.Repeat("x", MaxOwnerLen+1)}, {1, "\xff"}} {
		if _, err := a.Acquire(ctx, bad.g, bad.owner); !errors.Is(err, ErrInvalid) {
			t.Errorf("Acquire(%d, %q) = %v, want ErrInvalid", bad.g, bad.owner, err)
		}
	}
	if _, err := a.Acquire(ctx, 2, "a"); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "skips") {
		t.Errorf("Acquire(2) on a fresh arbiter = %v, want a loss that says it skips", err)
	}
	long := strings.Repeat("o", MaxOwnerLen)
	if c, err := a.Acquire(ctx, 1, long); err != nil || c != (Claim{1, long}) {
		t.Fatalf("Acquire(1, 64-byte owner) = %v, %v; want a win", c, err)
	}
	if c, err := a.Acquire(ctx, 1, long); err != nil || c != (Claim{1, long}) {
		t.Fatalf("retried Acquire(1) by the holder = %v, %v; want the same win", c, err)
	}
	var lost *LostError
	if c, err := a.Acquire(ctx, 1, "b"); !errors.As(err, &lost) || lost.Holder != (Claim{1, long}) || c != lost.Holder {
		t.Fatalf("Acquire(1, b) after a's win = %v, %v; want a loss naming a", c, err)
	}
	if c, err := a.Acquire(ctx, 2, "b"); err != nil || c != (Claim{2, "b"}) {
		t.Fatalf("Acquire(2, b) = %v, %v; want a win", c, err)
	}
	if _, err := a.Acquire(ctx, 2, long); !errors.As(err, &lost) || lost.Holder != (Claim{2, "b"}) {
		t.Fatalf("old holder retrying generation 2 = %v; want a loss naming b", err)
	}
	if _, err := a.Acquire(ctx, 1, long); !errors.Is(err, ErrLost) {
		t.Fatalf("old holder retrying generation 1 after 2 = %v; want a loss", err)
	}
	if c, err := a.Current(ctx); err != nil || c != (Claim{2, "b"}) {
		t.Fatalf("Current = %v, %v; want generation 2 held by b", c, err)
	}
}

func TestMemoryContract(t *testing.T) { checkArbiterContract(t, NewMemory()) }

func TestMemoryUnreachable(t *testing.T) {
	m := NewMemory()
	m.SetUnreachable(true)
	if _, err := m.Acquire(context.Background(), 1, "a"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Acquire while unreachable = %v", err)
	}
	m.SetUnreachable(false)
	if _, err := m.Acquire(context.Background(), 1, "a"); err != nil {
		t.Fatalf("Acquire after reconnect = %v", err)
	}
}

func TestMemoryRace(t *testing.T) {
	m := NewMemory()
	for _, n := range []int{2, 5} {
		arbs := make([]Arbiter, n)
		for i := range arbs {
			arbs[i] = m
		}
		raceRounds(t, arbs, 1000)
	}
}
