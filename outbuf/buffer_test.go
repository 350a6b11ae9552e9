package outbuf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestNewValidates(t *testing.T) {
	good := Env{Fence: &testFence{}, Clock: SystemClock{}}
	cases := []struct {
		name string
		cfg  Config
		env  Env
	}{
		{"zero MaxBytes", Config{MaxOutputs: 1}, good},
		{"negative MaxBytes", Config{MaxBytes: -1, MaxOutputs: 1}, good},
		{"zero MaxOutputs", Config{MaxBytes: 1}, good},
		{"no fence", DefaultConfig(), Env{Clock: SystemClock{}}},
		{"no clock", DefaultConfig(), Env{Fence: &testFence{}}},
	}
	for _, c := range cases {
		if _, err := New(c.cfg, c.env); err == nil {
			t.Errorf("%s: New accepted it", c.name)
		}
	}
	if _, err := New(DefaultConfig(), good); err != nil {
		t.Fatalf("New(DefaultConfig): %v", err)
	}
}

// Outputs of both kinds come out in emission order, each only once its
// position is committed, and a lower commit releases nothing new.
func TestReleaseInEmissionOrderAcrossKinds(t *testing.T) {
	r := newRig(t, DefaultConfig())
	outs := []struct {
		pos uint64
		out Output
	}{
		{0, NetFrame([]byte("a"))},
		{0, DiskWrite([]byte("bb"), 100)},
		{1, NetFrame([]byte("c"))},
		{2, DiskWrite([]byte("dd"), 5000)},
		{2, NetFrame([]byte("e"))},
		{2, DiskWrite([]byte("ff"), 101)},
		{4, NetFrame([]byte("g"))},
	}
	for _, o := range outs {
		mustHold(t, r.b, o.pos, o.out)
	}
	if got := r.rec.snapshot(); len(got) != 0 {
		t.Fatalf("released %d outputs before any commit", len(got))
	}
	check := func(wantN int) {
		t.Helper()
		got := r.rec.snapshot()
		if len(got) != wantN {
			t.Fatalf("released %d outputs, want %d", len(got), wantN)
		}
		for i, g := range got {
			w := outs[i].out
			if g.kind != w.Kind || !bytes.Equal(g.data, w.Data) || g.off != w.Off {
				t.Fatalf("release %d = %s %q@%d, want %s %q@%d", i, g.kind, g.data, g.off, w.Kind, w.Data, w.Off)
			}
		}
		if s := r.b.Stats(); s.HeldOutputs != len(outs)-wantN || s.Released != uint64(wantN) {
			t.Fatalf("stats held %d released %d, want %d and %d", s.HeldOutputs, s.Released, len(outs)-wantN, wantN)
		}
	}
	mustCommit(t, r.b, 0)
	check(2)
	mustCommit(t, r.b, 2)
	check(6)
	if s := r.b.Stats(); s.OldestHeld != 4 || s.HeldBytes != 1 {
		t.Fatalf("oldest held %d bytes %d, want position 4 and 1 byte", s.OldestHeld, s.HeldBytes)
	}
	mustCommit(t, r.b, 1) // lower: no-op
	check(6)
	if s := r.b.Stats(); s.Committed != 2 {
		t.Fatalf("committed %d after a lower commit, want 2", s.Committed)
	}
	mustCommit(t, r.b, 3) // nothing at 3
	check(6)
	mustCommit(t, r.b, 4)
	check(7)
}

// Nothing is committed at first: position 0 is a position like any other.
func TestPositionZeroIsNotCommittedByDefault(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustHold(t, r.b, 0, NetFrame([]byte("x")))
	if n := len(r.rec.snapshot()); n != 0 {
		t.Fatalf("released %d outputs at position 0 with nothing committed", n)
	}
	if s := r.b.Stats(); s.AnyCommitted {
		t.Fatal("stats say something is committed")
	}
	mustCommit(t, r.b, 0)
	if n := len(r.rec.snapshot()); n != 1 {
		t.Fatalf("released %d outputs after Commit(0), want 1", n)
	}
}

// Replay mode: the ack may overtake the device. A Hold at a committed
// position releases at once, after everything held before it.
func TestHoldAtCommittedPositionReleasesAtOnce(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustCommit(t, r.b, 10)
	mustHold(t, r.b, 10, NetFrame([]byte("late")))
	mustHold(t, r.b, 11, NetFrame([]byte("next")))
	got := r.rec.snapshot()
	if len(got) != 1 || string(got[0].data) != "late" {
		t.Fatalf("released %v, want only the committed frame", got)
	}
}

// Hold copies the caller's bytes.
func TestHoldCopies(t *testing.T) {
	r := newRig(t, DefaultConfig())
	p := []byte("frame")
	w := []byte("write")
	mustHold(t, r.b, 1, NetFrame(p))
	mustHold(t, r.b, 1, DiskWrite(w, 0))
	copy(p, "XXXXX")
	copy(w, "YYYYY")
	got := make([]byte, 5)
	if _, err := r.b.ReadAt(got, 0); err != nil || string(got) != "write" {
		t.Fatalf("ReadAt after the caller reused its buffer = %q, %v", got, err)
	}
	mustCommit(t, r.b, 1)
	if out := r.rec.snapshot(); string(out[0].data) != "frame" || string(out[1].data) != "write" {
		t.Fatalf("released %q and %q, want the bytes as held", out[0].data, out[1].data)
	}
}

func TestHoldRefusals(t *testing.T) {
	r := newRig(t, Config{MaxBytes: 100, MaxOutputs: 10})
	netOnly, err := New(DefaultConfig(), Env{Fence: r.fence, Net: r.rec, Clock: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	diskOnly, err := New(DefaultConfig(), Env{Fence: r.fence, Disk: r.disk, Clock: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name string
		b    *Buffer
		out  Output
		want error
	}{
		{"empty frame", r.b, NetFrame(nil), errInvalidOutput},
		{"empty write", r.b, DiskWrite(nil, 0), errInvalidOutput},
		{"zero kind", r.b, Output{Data: []byte("x")}, errInvalidOutput},
		{"unknown kind", r.b, Output{Kind: 9, Data: []byte("x")}, errInvalidOutput},
		{"frame with offset", r.b, Output{Kind: KindNetFrame, Data: []byte("x"), Off: 3}, errInvalidOutput},
		{"negative offset", r.b, DiskWrite([]byte("x"), -1), errInvalidOutput},
		{"offset overflow", r.b, DiskWrite([]byte("xy"), 1<<63-1), errInvalidOutput},
		{"oversize", r.b, NetFrame(make([]byte, 101)), ErrTooLarge},
		{"write without disk", netOnly, DiskWrite([]byte("x"), 0), ErrNoSink},
		{"frame without net", diskOnly, NetFrame([]byte("x")), ErrNoSink},
	}
	for _, c := range cases {
		if err := c.b.Hold(ctx, 1, c.out); !errors.Is(err, c.want) {
			t.Errorf("%s: Hold = %v, want %v", c.name, err, c.want)
		}
	}
	if s := r.b.Stats(); s.HeldOutputs != 0 {
		t.Fatalf("refused outputs were held: %d", s.HeldOutputs)
	}
	// Exactly MaxBytes fits.
	mustHold(t, r.b, 1, NetFrame(make([]byte, 100)))
	if _, err := netOnly.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrNoSink) {
		t.Fatalf("ReadAt without a disk = %v, want ErrNoSink", err)
	}
}

func TestPositionRegressionIsAnError(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustHold(t, r.b, 5, NetFrame([]byte("a")))
	mustHold(t, r.b, 5, NetFrame([]byte("b")))
	if err := r.b.Hold(context.Background(), 4, NetFrame([]byte("c"))); !errors.Is(err, ErrPositionRegressed) {
		t.Fatalf("Hold(4) after Hold(5) = %v, want ErrPositionRegressed", err)
	}
	if s := r.b.Stats(); s.HeldOutputs != 2 {
		t.Fatalf("held %d, want 2", s.HeldOutputs)
	}
	mustHold(t, r.b, 6, NetFrame([]byte("d")))
}

func TestDropDiscardsUnreleased(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustHold(t, r.b, 1, NetFrame([]byte("a")))
	mustHold(t, r.b, 1, DiskWrite([]byte("AAAA"), 0))
	mustHold(t, r.b, 2, NetFrame([]byte("b")))
	mustHold(t, r.b, 2, DiskWrite([]byte("BB"), 2))
	mustHold(t, r.b, 3, DiskWrite([]byte("C"), 10))
	mustCommit(t, r.b, 1)
	r.b.Drop()
	s := r.b.Stats()
	if s.HeldOutputs != 0 || s.HeldBytes != 0 || s.Dropped != 3 || s.Released != 2 {
		t.Fatalf("after Drop: held %d (%d B) dropped %d released %d, want 0 0 3 2", s.HeldOutputs, s.HeldBytes, s.Dropped, s.Released)
	}
	// The guest's disk view lost the dropped writes.
	got := make([]byte, 11)
	n, err := r.b.ReadAt(got, 0)
	if n != 4 || err == nil || string(got[:4]) != "AAAA" {
		t.Fatalf("ReadAt after Drop = %d %q, %v; want 4 \"AAAA\" and EOF", n, got[:n], err)
	}
	mustCommit(t, r.b, 3)
	if got := r.rec.snapshot(); len(got) != 2 {
		t.Fatalf("released %d outputs in all, want 2: dropped outputs leaked", len(got))
	}
	// Still usable, positions still may not regress.
	if err := r.b.Hold(context.Background(), 2, NetFrame([]byte("x"))); !errors.Is(err, ErrPositionRegressed) {
		t.Fatalf("Hold(2) after Drop = %v, want ErrPositionRegressed", err)
	}
	mustHold(t, r.b, 4, NetFrame([]byte("d")))
	mustCommit(t, r.b, 4)
	if got := r.rec.snapshot(); len(got) != 3 || string(got[2].data) != "d" {
		t.Fatalf("after Drop and a new commit released %v", got)
	}
}

// HeldDiskWrites lists the unreleased writes, with positions, as copies.
func TestHeldDiskWrites(t *testing.T) {
	r := newRig(t, DefaultConfig())
	mustHold(t, r.b, 1, DiskWrite([]byte("AAAA"), 0))
	mustHold(t, r.b, 2, NetFrame([]byte("frame")))
	mustHold(t, r.b, 2, DiskWrite([]byte("BB"), 2))
	mustHold(t, r.b, 3, DiskWrite([]byte("C"), 10))
	mustCommit(t, r.b, 1)
	got := r.b.HeldDiskWrites()
	want := []HeldWrite{{2, 2, []byte("BB")}, {3, 10, []byte("C")}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("HeldDiskWrites = %v, want %v", got, want)
	}
	got[0].Data[0] = 'X'
	mustCommit(t, r.b, 3)
	if d := r.disk.Bytes(); string(d[:4]) != "AABB" {
		t.Fatalf("disk %q after release: HeldDiskWrites shared the buffer's data", d[:4])
	}
	if got := r.b.HeldDiskWrites(); len(got) != 0 {
		t.Fatalf("after every release HeldDiskWrites = %v", got)
	}
}

// A release pass in flight finishes before HeldDiskWrites looks: every
// write is either on the disk or returned, never neither, never both.
func TestHeldDiskWritesDuringARelease(t *testing.T) {
	r := newRig(t, DefaultConfig())
	entered, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	r.disk.OnWrite = func([]byte, int64) error {
		once.Do(func() { close(entered); <-proceed })
		return nil
	}
	for pos := uint64(1); pos <= 6; pos++ {
		mustHold(t, r.b, pos, DiskWrite([]byte{byte(pos)}, int64(pos)))
	}
	committed := make(chan error)
	go func() { committed <- r.b.Commit(3) }()
	<-entered
	listed := make(chan []HeldWrite)
	go func() { listed <- r.b.HeldDiskWrites() }()
	select {
	case got := <-listed:
		t.Fatalf("HeldDiskWrites returned %v with a release pass half-way", got)
	case <-time.After(20 * time.Millisecond):
	}
	close(proceed)
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	got := <-listed
	if len(got) != 3 || got[0].Pos != 4 || got[2].Pos != 6 {
		t.Fatalf("HeldDiskWrites = %v, want positions 4, 5, 6", got)
	}
}

// A disk write that fails stays held and visible; the buffer fails.
func TestSinkErrorFailsAndKeepsOutput(t *testing.T) {
	r := newRig(t, DefaultConfig())
	errDisk := errors.New("disk on fire")
	r.disk.OnWrite = func([]byte, int64) error { return errDisk }
	mustHold(t, r.b, 1, NetFrame([]byte("a")))
	mustHold(t, r.b, 1, DiskWrite([]byte("data"), 0))
	mustHold(t, r.b, 1, NetFrame([]byte("b")))
	if err := r.b.Commit(1); !errors.Is(err, errDisk) {
		t.Fatalf("Commit = %v, want the disk's error", err)
	}
	if got := r.rec.snapshot(); len(got) != 1 || string(got[0].data) != "a" {
		t.Fatalf("released %v, want only the frame before the failed write", got)
	}
	got := make([]byte, 4)
	if _, err := r.b.ReadAt(got, 0); err != nil || string(got) != "data" {
		t.Fatalf("ReadAt of the failed write = %q, %v; want it still visible", got, err)
	}
	if s := r.b.Stats(); s.HeldOutputs != 2 || !errors.Is(s.Failed, errDisk) {
		t.Fatalf("stats held %d failed %v", s.HeldOutputs, s.Failed)
	}
	r.disk.OnWrite = nil
	if err := r.b.Commit(1); !errors.Is(err, errDisk) {
		t.Fatalf("Commit after failure = %v, want the same failure", err)
	}
	if err := r.b.Hold(context.Background(), 2, NetFrame([]byte("c"))); !errors.Is(err, errDisk) {
		t.Fatalf("Hold after failure = %v, want the failure", err)
	}
}
