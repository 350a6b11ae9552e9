package outbuf

import (
	"context"
	"errors"
	"testing"
)

// A buffer whose generation the fence does not accept releases nothing.
func TestFenceWrongGenerationReleasesNothing(t *testing.T) {
	r := newRig(t, DefaultConfig())
	stale, err := New(DefaultConfig(), Env{Generation: testGen - 1, Fence: r.fence, Net: r.rec, Disk: r.disk, Clock: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	mustHold(t, stale, 1, NetFrame([]byte("a")))
	mustHold(t, stale, 1, DiskWrite([]byte("b"), 0))
	if err := stale.Commit(1); !errors.Is(err, ErrFenced) {
		t.Fatalf("Commit under a stale generation = %v, want ErrFenced", err)
	}
	if got := r.rec.snapshot(); len(got) != 0 {
		t.Fatalf("stale generation released %d outputs", len(got))
	}
	if got := r.disk.Bytes(); len(got) != 0 {
		t.Fatalf("stale generation wrote the disk: %q", got)
	}
}

// Once the fence refuses, nothing more leaves, outputs stay held, and every
// later call reports the refusal, wrapping the fence's own error.
func TestFenceRevokedMidStream(t *testing.T) {
	r := newRig(t, Config{MaxBytes: 3, MaxOutputs: 100})
	mustHold(t, r.b, 1, NetFrame([]byte("a")))
	mustCommit(t, r.b, 1)
	mustHold(t, r.b, 2, NetFrame([]byte("b")))
	mustHold(t, r.b, 2, DiskWrite([]byte("c"), 0))
	mustHold(t, r.b, 3, NetFrame([]byte("d")))
	waiter := holdAsync(context.Background(), r.b, 3, NetFrame([]byte("e")))
	waitWaiting(t, r.b, 1)

	r.fence.revoke(errLostLease)
	err := r.b.Commit(3)
	if !errors.Is(err, ErrFenced) || !errors.Is(err, errLostLease) {
		t.Fatalf("Commit after revocation = %v, want ErrFenced wrapping the fence's error", err)
	}
	if got := r.rec.snapshot(); len(got) != 1 {
		t.Fatalf("released %d outputs, want only the one committed before revocation", len(got))
	}
	if got := r.disk.Bytes(); len(got) != 0 {
		t.Fatalf("disk written after revocation: %q", got)
	}
	if s := r.b.Stats(); s.HeldOutputs != 3 || s.HeldBytes != 3 {
		t.Fatalf("held %d outputs (%d B) after refusal, want 3 (3 B) kept", s.HeldOutputs, s.HeldBytes)
	}
	if err := <-waiter; !errors.Is(err, ErrFenced) {
		t.Fatalf("blocked Hold returned %v, want ErrFenced", err)
	}
	if err := r.b.Hold(context.Background(), 4, NetFrame([]byte("f"))); !errors.Is(err, ErrFenced) {
		t.Fatalf("Hold after refusal = %v, want ErrFenced", err)
	}
	// Even if the fence came back, a failed buffer stays failed.
	r.fence.revoke(nil)
	if err := r.b.Commit(3); !errors.Is(err, ErrFenced) {
		t.Fatalf("Commit after the fence recovered = %v, want the sticky failure", err)
	}
	if got := r.rec.snapshot(); len(got) != 1 {
		t.Fatalf("released %d outputs after failure", len(got))
	}
	if !errors.Is(r.b.Err(), ErrFenced) {
		t.Fatalf("Err = %v", r.b.Err())
	}
}

// Every release pass is fenced, including one started by Hold.
func TestEveryReleasePassChecksFence(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustCommit(t, r.b, 5) // nothing held: no release, no check needed
	before := r.fence.checks
	mustHold(t, r.b, 5, NetFrame([]byte("a")))
	if r.fence.checks != before+1 {
		t.Fatalf("a Hold at a committed position released with %d fence checks", r.fence.checks-before)
	}
	r.fence.revoke(errLostLease)
	if err := r.b.Hold(context.Background(), 5, NetFrame([]byte("b"))); err != nil {
		t.Fatalf("Hold = %v; the output is held even though its release was refused", err)
	}
	if got := r.rec.snapshot(); len(got) != 1 {
		t.Fatalf("released %d outputs, want 1", len(got))
	}
	if !errors.Is(r.b.Err(), ErrFenced) {
		t.Fatalf("Err = %v, want ErrFenced", r.b.Err())
	}
}

// A suspended fence (a primary deciding, at the witness, whether it goes on
// alone) refuses a release for now only: the outputs stay held, the buffer
// does not fail, and they leave at the first pass after the fence is valid
// again. A late ack during the contest once failed the buffer for good, so
// the primary that won the next generation could release nothing.
func TestFenceSuspendedDefersRelease(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustHold(t, r.b, 1, NetFrame([]byte("a")))
	mustHold(t, r.b, 2, DiskWrite([]byte("b"), 0))
	r.fence.suspend(true)
	if err := r.b.Commit(2); err != nil {
		t.Fatalf("Commit while the fence is suspended = %v, want nil (deferred)", err)
	}
	if got := r.rec.snapshot(); len(got) != 0 {
		t.Fatalf("released %d outputs through a suspended fence", len(got))
	}
	if got := r.disk.Bytes(); len(got) != 0 {
		t.Fatalf("disk written through a suspended fence: %q", got)
	}
	if err := r.b.Err(); err != nil {
		t.Fatalf("Err = %v after a temporary refusal", err)
	}
	r.fence.suspend(false)
	mustCommit(t, r.b, 2)
	if got := r.rec.snapshot(); len(got) != 2 {
		t.Fatalf("released %d outputs once the fence was valid, want 2", len(got))
	}
}
