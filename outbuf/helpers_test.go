package outbuf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// fakeClock is a Clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testFence accepts one generation until revoked, and counts its checks.
type testFence struct {
	mu        sync.Mutex
	current   uint64
	revoked   error
	suspended bool
	checks    int
}

// errSuspended is a temporary refusal, as witness.Fence's while suspended.
type errSuspended struct{}

func (errSuspended) Error() string   { return "fence suspended" }
func (errSuspended) Temporary() bool { return true }

var errLostLease = errors.New("lease lost")

func (f *testFence) Check(gen uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks++
	if f.revoked != nil {
		return f.revoked
	}
	if f.suspended {
		return fmt.Errorf("generation %d: %w", gen, errSuspended{})
	}
	if gen != f.current {
		return errors.New("generation is not current")
	}
	return nil
}

func (f *testFence) suspend(on bool) {
	f.mu.Lock()
	f.suspended = on
	f.mu.Unlock()
}

func (f *testFence) revoke(err error) {
	f.mu.Lock()
	f.revoked = err
	f.mu.Unlock()
}

// released is one output as a sink saw it.
type released struct {
	kind Kind
	data []byte
	off  int64
}

// recorder is a NetSink that logs every frame into a shared log, with an
// optional hook run first (which may refuse the frame).
type recorder struct {
	mu     sync.Mutex
	log    []released
	onSend func(frame []byte) error
}

func (r *recorder) SendFrame(frame []byte) error {
	if r.onSend != nil {
		if err := r.onSend(frame); err != nil {
			return err
		}
	}
	r.mu.Lock()
	r.log = append(r.log, released{kind: KindNetFrame, data: append([]byte(nil), frame...)})
	r.mu.Unlock()
	return nil
}

func (r *recorder) snapshot() []released {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]released(nil), r.log...)
}

// diskWrite logs a write the disk applied (the disk's AfterWrite), so
// order across kinds can be checked.
func (r *recorder) diskWrite(p []byte, off int64) {
	r.mu.Lock()
	r.log = append(r.log, released{kind: KindDiskWrite, data: append([]byte(nil), p...), off: off})
	r.mu.Unlock()
}

// rig is a Buffer wired to test fakes. Its disk grows on writes past its
// end, like a file, and logs what it applied to rec (unless a test unsets
// its AfterWrite); hooks may fail or stall a call.
type rig struct {
	b     *Buffer
	fence *testFence
	rec   *recorder
	disk  *vmmtest.MemDisk
	clock *fakeClock
}

const testGen = 7

func newRig(t testing.TB, cfg Config) *rig {
	t.Helper()
	r := &rig{fence: &testFence{current: testGen}, rec: &recorder{}, clock: newFakeClock()}
	r.disk = vmmtest.NewGrowingMemDisk()
	r.disk.AfterWrite = r.rec.diskWrite
	b, err := New(cfg, Env{Generation: testGen, Fence: r.fence, Net: r.rec, Disk: r.disk, Clock: r.clock, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.b = b
	return r
}

// tagged is a frame carrying a position, a holder id and a sequence number,
// so a sink can check what it is given.
func tagged(pos uint64, holder, seq uint32, size int) []byte {
	f := make([]byte, max(size, 16))
	binary.LittleEndian.PutUint64(f[0:], pos)
	binary.LittleEndian.PutUint32(f[8:], holder)
	binary.LittleEndian.PutUint32(f[12:], seq)
	return f
}

func untag(f []byte) (pos uint64, holder, seq uint32) {
	return binary.LittleEndian.Uint64(f[0:]), binary.LittleEndian.Uint32(f[8:]), binary.LittleEndian.Uint32(f[12:])
}

// mustHold holds out at pos and fails the test on error.
func mustHold(t testing.TB, b *Buffer, pos uint64, out Output) {
	t.Helper()
	if err := b.Hold(context.Background(), pos, out); err != nil {
		t.Fatalf("Hold(%d, %s): %v", pos, out.Kind, err)
	}
}

// mustCommit commits pos and fails the test on error.
func mustCommit(t testing.TB, b *Buffer, pos uint64) {
	t.Helper()
	if err := b.Commit(pos); err != nil {
		t.Fatalf("Commit(%d): %v", pos, err)
	}
}

// waitWaiting waits until n Holds are blocked for room. It decides
// nothing: it only orders the test's steps after the goroutines it started.
func waitWaiting(t testing.TB, b *Buffer, n int) {
	t.Helper()
	vmmtest.WaitUntil(t, fmt.Sprintf("%d Holds waiting for room", n), func() bool { return b.Stats().Waiting == n })
}

// holdAsync starts Hold on a goroutine and returns its result channel.
func holdAsync(ctx context.Context, b *Buffer, pos uint64, out Output) <-chan error {
	done := make(chan error, 1)
	go func() { done <- b.Hold(ctx, pos, out) }()
	return done
}

// assertBlocked fails the test if the hold behind ch has returned. It is
// called only once the hold is counted in Stats().Waiting and nothing can
// have made room, so a return would be a bug, not a race.
func assertBlocked(t testing.TB, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned (%v) while the buffer had no room for it", what, err)
	default:
	}
}
