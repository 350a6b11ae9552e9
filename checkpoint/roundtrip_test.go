package checkpoint

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTripRandomEpochs(t *testing.T) {
	for seed := uint64(1); seed <= 4; seed++ {
		h := newHarness(t, 257, seed) // odd size: last bitmap word is partial
		h.fullSync()
		for i := range 150 {
			ck := h.nextEpoch(h.rng.IntN(80), i%7 == 0)
			h.mustCommit(ck)
		}
		st := h.enc.Stats()
		for _, e := range []Encoding{EncZero, EncRaw, EncLZ4, EncXORLZ4} {
			if st.Pages[e] == 0 {
				t.Errorf("seed %d: no page was sent as %v (stats %+v): the test does not exercise it", seed, e, st)
			}
		}
		if st.Unchanged == 0 {
			t.Errorf("seed %d: no unchanged page was skipped", seed)
		}
	}
}

// The encoder must pick the smallest encoding for each kind of change.
func TestEncoderPicksSmallest(t *testing.T) {
	cases := []struct {
		c    change
		want Encoding
	}{
		{changeFewBytes, EncXORLZ4},
		{changeRandom, EncRaw},
		{changeZero, EncZero},
	}
	for _, tc := range cases {
		t.Run(tc.c.String(), func(t *testing.T) {
			h := newHarness(t, 64, 7)
			for pfn := range h.pages { // compressible but not zero
				p := h.page(pfn)
				for i := range p {
					p[i] = byte(i / 64)
				}
				p[0] = byte(pfn)
			}
			h.fullSync()
			h.enc.ResetStats()
			h.mustCommit(h.encode(KindEpoch, 0, h.epoch+1, h.dirty(32, tc.c), false))
			st := h.enc.Stats()
			if st.Pages[tc.want] != 32 {
				t.Fatalf("stats %+v: want all 32 pages as %v", st, tc.want)
			}
		})
	}
}

// A full sync in several pre-copy rounds while the guest keeps writing:
// the rounds are not a committed state; the commit is.
func TestPreCopyRounds(t *testing.T) {
	h := newHarness(t, 200, 3)
	h.fullSync()
	h.mustCommit(h.nextEpoch(10, false))
	committedEpoch := h.epoch

	target := h.epoch + 10
	round1 := h.encode(KindSyncRound, FlagSyncStart, target, allPages(100), false)
	if res, err := h.bk.Receive(round1); err != nil || res.Committed {
		t.Fatalf("round 1: %+v, %v", res, err)
	}
	if st := h.bk.Status(); st.State != StateSyncing || st.Epoch != target {
		t.Fatalf("after round 1: %+v, want syncing to %d", st, target)
	}
	if h.bk.Machine() != nil {
		t.Fatal("a syncing backup still offers a machine state to take over from")
	}
	// An epoch cannot follow: the backup no longer holds a committed state.
	mustReject(t, h.bk, h.encodeDetached(KindEpoch, committedEpoch+1), ErrEpochOrder)

	// The guest ran during round 1 and dirtied pages on both sides of it.
	redirty := h.dirty(30, changeFewBytes)
	rest := allPages(200)[100:]
	round2 := h.encode(KindSyncRound, 0, target, union(rest, redirty), false)
	h.enc.ResetStats()
	if _, err := h.bk.Receive(round2); err != nil {
		t.Fatalf("round 2: %v", err)
	}
	final := h.dirty(20, -1)
	h.enc.ResetStats()
	commit := h.encode(KindSyncCommit, 0, target, final, true)
	if h.enc.Stats().Pages[EncXORLZ4] == 0 {
		t.Errorf("commit sent no XOR deltas for pages covered earlier in the sync: %+v", h.enc.Stats())
	}
	h.mustCommit(commit)
	for range 20 {
		h.mustCommit(h.nextEpoch(25, false))
	}
}

// encodeDetached encodes a checkpoint with a throwaway encoder whose cache
// claims everything is known, for sending where it must be refused.
func (h *harness) encodeDetached(k Kind, epoch uint64) []byte {
	cache, _ := NewPageCache(len(h.mem))
	e := NewEncoder(cache)
	if err := e.Begin(nil, Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: h.gen, Epoch: epoch - 1}); err != nil {
		h.tb.Fatal(err)
	}
	for p := range h.pages {
		_ = e.AddPage(p, h.page(p))
	}
	if _, err := e.Finish([]byte("x"), false); err != nil {
		h.tb.Fatal(err)
	}
	if err := e.Begin(nil, Header{Kind: k, Generation: h.gen, Epoch: epoch}); err != nil {
		h.tb.Fatal(err)
	}
	_ = e.AddPage(0, make([]byte, PageSize))
	out, err := e.Finish([]byte("x"), false)
	if err != nil {
		h.tb.Fatal(err)
	}
	return out
}

func union(a, b []uint64) []uint64 {
	seen := map[uint64]bool{}
	var out []uint64
	for _, s := range [][]uint64{a, b} {
		for _, p := range s {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	sortU64(out)
	return out
}

// A one-message sync keeps the old committed state until it applies, so a
// corrupt one leaves the backup able to take over.
func TestOneMessageResyncIsAtomic(t *testing.T) {
	h := newHarness(t, 64, 5)
	h.fullSync()
	h.mustCommit(h.nextEpoch(10, false))
	before := h.bk.Status()
	h.dirty(20, -1)
	ck := h.encode(KindSyncCommit, FlagSyncStart, h.epoch+5, allPages(h.pages), false)
	bad := append([]byte(nil), ck...)
	bad[len(bad)/2] ^= 0x40
	mustReject(t, h.bk, bad, ErrChecksum)
	if h.bk.Status() != before || h.bk.Machine() == nil {
		t.Fatalf("backup lost its committed state: %+v", h.bk.Status())
	}
	h.mustCommit(ck)
}

// The committed state says whether its checkpoint carried FlagHeld, and
// only the last committed one counts.
func TestCommittedStateSaysHeld(t *testing.T) {
	h := newHarness(t, 64, 3)
	h.fullSync()
	for i, held := range []bool{true, true, false, true} {
		var f Flags
		if held {
			f = FlagHeld
		}
		h.mustCommit(h.encode(KindEpoch, f, h.epoch+1, h.dirty(3, -1), false))
		if got := h.bk.Status().Held; got != held {
			t.Fatalf("epoch %d of the sequence: held %v, the checkpoint said %v", i, got, held)
		}
	}
	h.mustCommit(h.encode(KindSyncCommit, FlagSyncStart|FlagHeld, h.epoch+5, allPages(h.pages), false))
	if !h.bk.Status().Held {
		t.Fatal("a held sync's commit: not held")
	}
}

// The reconnect rule: a primary whose cache Base is ahead of the backup's
// committed state must resync; after that, deltas are right again.
func TestLostCheckpointForcesResync(t *testing.T) {
	h := newHarness(t, 64, 9)
	h.fullSync()
	h.mustCommit(h.nextEpoch(10, false))
	lost := h.nextEpoch(10, false) // never delivered
	_ = lost
	next := h.nextEpoch(10, false)
	if g, e, ok := h.enc.Cache().Base(); !ok || g != h.gen || e != h.epoch {
		t.Fatalf("cache base %d/%d/%v, want %d/%d", g, e, ok, h.gen, h.epoch)
	}
	st := h.bk.Status()
	if st.Epoch == h.epoch {
		t.Fatal("test setup: backup should be behind")
	}
	var oe *OrderError
	err := mustReject(t, h.bk, next, ErrEpochOrder)
	if !errors.As(err, &oe) || oe.Got.Epoch != h.epoch || oe.HaveEpoch != st.Epoch {
		t.Fatalf("order error %v does not say what was expected and what came", err)
	}
	h.fullSync()
	h.mustCommit(h.nextEpoch(10, true))
}

// After Abort (or a failed Finish) the encoder refuses deltas.
func TestEncoderAbortForcesSync(t *testing.T) {
	h := newHarness(t, 16, 2)
	h.fullSync()
	if err := h.enc.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: h.epoch + 1}); err != nil {
		t.Fatal(err)
	}
	if err := h.enc.AddPage(3, h.page(3)); err != nil {
		t.Fatal(err)
	}
	h.enc.Abort()
	if err := h.enc.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: h.epoch + 1}); !errors.Is(err, ErrEncoderState) {
		t.Fatalf("delta after abort: %v, want ErrEncoderState", err)
	}
	if _, _, ok := h.enc.Cache().Base(); ok {
		t.Fatal("cache base still valid after abort")
	}
	h.fullSync()
}

func TestEncoderRejectsMisuse(t *testing.T) {
	h := newHarness(t, 16, 2)
	h.fullSync()
	e := h.enc
	if err := e.AddPage(1, h.page(1)); !errors.Is(err, ErrEncoderState) {
		t.Errorf("AddPage before Begin: %v", err)
	}
	if err := e.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: h.epoch + 1}); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		pfn  uint64
		page []byte
		want error
	}{
		{16, h.page(1), ErrPageRange},
		{2, h.page(1)[:100], ErrBadPage},
	}
	for _, c := range checks {
		if err := e.AddPage(c.pfn, c.page); !errors.Is(err, c.want) {
			t.Errorf("AddPage(%d, %d bytes): %v, want %v", c.pfn, len(c.page), err, c.want)
		}
	}
	h.mutate(5, changeRandom)
	if err := e.AddPage(5, h.page(5)); err != nil {
		t.Fatal(err)
	}
	for _, p := range []uint64{5, 4} {
		if err := e.AddPage(p, h.page(p)); !errors.Is(err, ErrDuplicatePage) {
			t.Errorf("AddPage(%d) after 5: %v", p, err)
		}
	}
	if _, err := e.Finish(nil, false); !errors.Is(err, ErrMissingSection) {
		t.Errorf("Finish without machine state: %v", err)
	}
	// The failed Finish abandoned the checkpoint: a sync is needed.
	if _, _, ok := e.Cache().Base(); ok {
		t.Error("cache base valid after a failed Finish")
	}
	if err := e.Begin(nil, Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: h.gen, Epoch: h.epoch + 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Finish([]byte("m"), false); !errors.Is(err, ErrIncompleteSync) {
		t.Errorf("sync commit covering nothing: %v", err)
	}
}

func TestPeekHeader(t *testing.T) {
	h := newHarness(t, 4, 1)
	round := h.encode(KindSyncRound, FlagSyncStart, 9, allPages(4), false)
	commit := h.encode(KindSyncCommit, 0, 9, nil, false)
	for _, tc := range []struct {
		buf  []byte
		want Header
		ok   bool
	}{
		{round, Header{KindSyncRound, FlagSyncStart, h.gen, 9, 4}, true},
		{commit, Header{KindSyncCommit, 0, h.gen, 9, 4}, true},
		{round[:headerSize-1], Header{}, false},
		{append([]byte("XTCKPT\x00C"), round[8:]...), Header{}, false},
		{nil, Header{}, false},
	} {
		if got, ok := PeekHeader(tc.buf); got != tc.want || ok != tc.ok {
			t.Errorf("PeekHeader(% x...) = %v, %v; want %v, %v", tc.buf[:min(len(tc.buf), 12)], got, ok, tc.want, tc.ok)
		}
	}
}

// TestPageCacheZeroPages: a zero page stored in a fresh cache leaves its
// bytes untouched, yet reads as zero; a page that held data and becomes
// zero is zero in the cache too (a later delta against it must be right);
// the hash covers both.
func TestPageCacheZeroPages(t *testing.T) {
	c, err := NewPageCache(4 * PageSize)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, PageSize)
	c.store(0, zeroPage[:], true)
	c.store(1, data, false)
	if c.written[0] != 1<<1 || !c.Valid(0) || !bytes.Equal(c.page(0), zeroPage[:]) {
		t.Fatalf("after a zero page and a data page: written %b, page 0 valid %v", c.written[0], c.Valid(0))
	}
	c.store(1, zeroPage[:], true)
	if !bytes.Equal(c.page(1), zeroPage[:]) {
		t.Fatal("a page that became zero still holds its old data in the cache")
	}
	c.store(2, data, false)
	c.store(3, zeroPage[:], true)
	want := make([]byte, 4*PageSize)
	copy(want[2*PageSize:], data)
	if !c.AllValid() || c.Hash() != HashMemory(want) {
		t.Fatal("the cache's hash is not that of the memory it describes")
	}
}
