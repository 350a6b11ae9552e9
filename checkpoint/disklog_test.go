package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// diskModel is what a backup must keep: every write of a committed epoch
// that the primary has not called durable, in order.
type diskModel struct {
	pending []DiskWrite // held by the primary, not yet durable
	kept    []DiskWrite // what the backup must report
}

// The backup keeps exactly the disk writes of committed epochs not yet
// durable, through random epochs, durable marks, lost checkpoints and full
// syncs; a rejected checkpoint changes none of them.
func TestDiskLogRoundTrip(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		h := newHarness(t, 16, 100+seed)
		h.fullSync()
		var m diskModel
		nextSync := false
		for i := range 300 {
			e := h.epoch + 1
			// The guest writes during e.
			var fresh []DiskWrite
			for range h.rng.IntN(4) {
				data := make([]byte, 1+h.rng.IntN(1500))
				for j := range data {
					data[j] = byte(h.rng.Uint32())
				}
				fresh = append(fresh, DiskWrite{Epoch: e, Off: int64(h.rng.IntN(1 << 20)), Data: data})
			}
			m.pending = append(m.pending, fresh...)
			// Some of the oldest pending writes became durable.
			m.pending = m.pending[h.rng.IntN(len(m.pending)+1)/2:]
			durable := e
			if len(m.pending) > 0 {
				durable = m.pending[0].Epoch - 1
			}
			var ck []byte
			if nextSync || i%50 == 49 {
				h.disk = &DiskLog{Durable: durable, Writes: slices.Clone(m.pending)}
				ck = h.encode(KindSyncCommit, FlagSyncStart, e, allPages(h.pages), false)
				m.kept = slices.Clone(m.pending)
				nextSync = false
			} else {
				h.disk = &DiskLog{Durable: durable, Writes: fresh}
				ck = h.nextEpoch(h.rng.IntN(4), false)
				if h.rng.IntN(20) == 0 {
					// Lost on the way: the backup keeps what it had; the
					// primary must resync, and the sync carries everything.
					mustReject(t, h.bk, ck[:len(ck)-1], ErrTruncated)
					nextSync = true
					continue
				}
				n := 0
				for n < len(m.kept) && m.kept[n].Epoch <= durable {
					n++
				}
				m.kept = append(slices.Clone(m.kept[n:]), fresh...)
			}
			h.mustCommit(ck)
			if got := h.bk.DiskWrites(); diskHash(got) != diskHash(m.kept) {
				t.Fatalf("seed %d epoch %d: backup keeps %s, want %s", seed, e, describe(got), describe(m.kept))
			}
		}
	}
}

func describe(ws []DiskWrite) string {
	var b bytes.Buffer
	for _, w := range ws {
		fmt.Fprintf(&b, "[e%d @%d %dB] ", w.Epoch, w.Off, len(w.Data))
	}
	return b.String()
}

// The backup's kept writes are its own copies: the buffer a checkpoint
// arrived in may be reused at once.
func TestDiskWritesAreCopied(t *testing.T) {
	h := newHarness(t, 8, 41)
	h.fullSync()
	h.disk = &DiskLog{Durable: h.epoch, Writes: []DiskWrite{{h.epoch + 1, 4096, []byte("kept")}}}
	ck := h.nextEpoch(2, false)
	h.mustCommit(ck)
	clear(ck)
	if ws := h.bk.DiskWrites(); len(ws) != 1 || string(ws[0].Data) != "kept" || ws[0].Off != 4096 {
		t.Fatalf("kept %+v after the checkpoint's buffer was cleared", ws)
	}
	// An epoch without a disk section changes nothing kept; a sync commit
	// without one keeps nothing.
	h.mustCommit(h.nextEpoch(2, false))
	if len(h.bk.DiskWrites()) != 1 {
		t.Fatalf("an epoch without a disk log dropped the kept writes")
	}
	h.fullSync()
	if len(h.bk.DiskWrites()) != 0 {
		t.Fatalf("a sync commit without a disk log left %d writes", len(h.bk.DiskWrites()))
	}
}

// The encoder refuses a disk log that breaks the section's rules, and one
// on a sync round.
func TestEncoderRejectsBadDiskLog(t *testing.T) {
	h := newHarness(t, 8, 42)
	h.fullSync()
	if err := h.enc.SetDiskLog(DiskLog{}); !errors.Is(err, ErrEncoderState) {
		t.Fatalf("SetDiskLog before Begin: %v", err)
	}
	e := h.epoch + 1
	cases := []struct {
		name string
		d    DiskLog
		want error
	}{
		{"durable ahead", DiskLog{Durable: e + 1}, ErrBadSection},
		{"empty write", DiskLog{Durable: e - 1, Writes: []DiskWrite{{e, 0, nil}}}, ErrBadDiskWrite},
		{"negative offset", DiskLog{Durable: e - 1, Writes: []DiskWrite{{e, -512, []byte("x")}}}, ErrBadDiskWrite},
		{"offset overflow", DiskLog{Durable: e - 1, Writes: []DiskWrite{{e, 1<<63 - 1, []byte("xy")}}}, ErrBadDiskWrite},
		{"write already durable", DiskLog{Durable: e, Writes: []DiskWrite{{e, 0, []byte("x")}}}, ErrBadDiskWrite},
		{"write of another epoch", DiskLog{Durable: e - 2, Writes: []DiskWrite{{e - 1, 0, []byte("x")}}}, ErrBadDiskWrite},
		{"write of a future epoch", DiskLog{Durable: e - 1, Writes: []DiskWrite{{e + 1, 0, []byte("x")}}}, ErrBadDiskWrite},
	}
	for _, tc := range cases {
		if err := h.enc.Begin(nil, Header{Kind: KindEpoch, Generation: h.gen, Epoch: e}); err != nil {
			t.Fatal(err)
		}
		if err := h.enc.SetDiskLog(tc.d); err != nil {
			t.Fatal(err)
		}
		if _, err := h.enc.Finish([]byte("m"), false); !errors.Is(err, tc.want) {
			t.Errorf("%s: Finish: %v, want %v", tc.name, err, tc.want)
		}
		h.fullSync() // a failed Finish invalidates the cache
		e = h.epoch + 1
	}
	if err := h.enc.Begin(nil, Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: h.gen, Epoch: e}); err != nil {
		t.Fatal(err)
	}
	if err := h.enc.SetDiskLog(DiskLog{Durable: e}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.enc.Finish(nil, false); !errors.Is(err, ErrForbiddenSection) {
		t.Errorf("disk log on a sync round: %v", err)
	}
	// A sync commit's log is whole: writes of several epochs, in order.
	h.fullSync()
	e = h.epoch + 1
	h.disk = &DiskLog{Durable: e - 3, Writes: []DiskWrite{{e - 2, 0, []byte("a")}, {e, 0, []byte("b")}}}
	h.mustCommit(h.encode(KindSyncCommit, FlagSyncStart, e, allPages(h.pages), false))
	if ws := h.bk.DiskWrites(); len(ws) != 2 || string(ws[0].Data) != "a" || string(ws[1].Data) != "b" {
		t.Fatalf("kept %s", describe(ws))
	}
	h.disk = &DiskLog{Durable: h.epoch - 3, Writes: []DiskWrite{{h.epoch, 0, []byte("b")}, {h.epoch - 1, 0, []byte("a")}}}
	if err := h.enc.Begin(nil, Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: h.gen, Epoch: h.epoch + 1}); err != nil {
		t.Fatal(err)
	}
	for p := range h.pages {
		_ = h.enc.AddPage(p, h.page(p))
	}
	_ = h.enc.SetDiskLog(*h.disk)
	h.disk = nil
	if _, err := h.enc.Finish([]byte("m"), false); !errors.Is(err, ErrBadDiskWrite) {
		t.Errorf("writes out of epoch order: %v", err)
	}
}
