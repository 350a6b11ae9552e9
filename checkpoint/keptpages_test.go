package checkpoint

import (
	"bytes"
	"errors"
	"testing"
)

// A backup that holds most pages already gets them as KEPT in a sync: it
// writes nothing for them, they count toward the sync's every page, and
// the encoder's cache takes the contents the primary compared, so the
// epochs after the sync (deltas against the cache, --verify's memory hash)
// agree with the backup's memory.
func TestKeptPagesCoverTheSync(t *testing.T) {
	const pages = 64
	h := newHarness(t, pages, 9)
	copy(h.bk.Memory(), h.mem)
	h.bk.Memory()[3*PageSize+100] ^= 0x5a // page 3 differs on the backup

	if err := h.enc.Begin(nil, Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: h.gen, Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	for pfn := range uint64(pages) {
		var err error
		if pfn == 3 {
			err = h.enc.AddPage(pfn, h.page(pfn))
		} else {
			err = h.enc.AddKeptPage(pfn, h.page(pfn))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := h.enc.AddKeptPage(pages-1, h.page(pages-1)); !errors.Is(err, ErrDuplicatePage) {
		t.Fatalf("a kept page repeated: %v", err)
	}
	round, err := h.enc.Finish(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	round = bytes.Clone(round)
	if len(round) > 2*PageSize {
		t.Fatalf("a round of 63 kept pages and one sent is %d bytes", len(round))
	}
	var ck Checkpoint
	if err := Decode(round, &ck); err != nil {
		t.Fatal(err)
	}
	if len(ck.Pages) != pages || ck.Pages[0].Enc != EncKept || ck.Pages[3].Enc == EncKept {
		t.Fatalf("decoded %d page records, first %v, page 3 %v: want %d, kept but page 3", len(ck.Pages), ck.Pages[0].Enc, ck.Pages[3].Enc, pages)
	}
	if _, err := h.bk.Receive(round); err != nil {
		t.Fatal(err)
	}
	h.epoch = 1
	h.mustCommit(h.encode(KindSyncCommit, 0, 1, nil, true)) // the memory hash: the cache is the backup's
	for range 3 {
		h.mustCommit(h.nextEpoch(8, true))
	}
}

// KEPT is for syncs: the encoder will not put one on an epoch, and a
// decoder refuses an epoch that carries one.
func TestKeptPageOnAnEpochIsRefused(t *testing.T) {
	h := newHarness(t, 8, 10)
	h.fullSync()
	if err := h.enc.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if err := h.enc.AddKeptPage(1, h.page(1)); !errors.Is(err, ErrBadPage) {
		t.Fatalf("a kept page on an epoch: %v", err)
	}
	h.enc.Abort()
	ck := build(Header{Kind: KindEpoch, Generation: h.gen, Epoch: 2, MemPages: 8},
		pagesSec(1, rec{gap: 1, enc: EncKept}), machineSec("m"))
	mustReject(t, h.bk, ck, ErrBadPage)
}

// A primary that keeps a page whose contents are not the backup's (it
// compared other contents than it encoded) is caught by --verify's memory
// hash at the commit, which the backup rejects: the test of the contract
// AddKeptPage states.
func TestKeptPageOfOtherContentsFailsTheMemoryHash(t *testing.T) {
	const pages = 16
	h := newHarness(t, pages, 11)
	copy(h.bk.Memory(), h.mem)
	h.bk.Memory()[5*PageSize] ^= 1
	if err := h.enc.Begin(nil, Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: h.gen, Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	for pfn := range uint64(pages) {
		if err := h.enc.AddKeptPage(pfn, h.page(pfn)); err != nil {
			t.Fatal(err)
		}
	}
	ck, err := h.enc.Finish(machineBlob(h.gen, 1), true)
	if err != nil {
		t.Fatal(err)
	}
	mustReject(t, h.bk, bytes.Clone(ck), ErrMemHash)
}
