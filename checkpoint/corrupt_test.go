package checkpoint

import (
	"bytes"
	"slices"
	"testing"
)

// Flipping any bit pattern at any byte of a small checkpoint is rejected
// with nothing half-applied; so is every truncation. Every byte is covered
// by the length check, the checksum, or is the checksum or commit marker
// itself, so there is no "harmless" position to excuse.
func TestCorruptEveryByte(t *testing.T) {
	h := newHarness(t, 8, 21)
	h.fullSync()
	h.mustCommit(h.nextEpoch(3, false))
	// One page of each kind, a machine state, a memory hash and a disk log.
	h.mutate(1, changeFewBytes)
	h.mutate(2, changeZero)
	h.mutate(4, changeRandom)
	h.mutate(6, changeFewBytes)
	h.enc.ResetStats()
	e := h.epoch + 1
	h.disk = &DiskLog{Durable: e - 1, Writes: []DiskWrite{{e, 512, []byte("sector one")}, {e, 0, []byte("sector zero")}}}
	ck := h.encode(KindEpoch, 0, h.epoch+1, []uint64{1, 2, 4, 6}, true)
	t.Logf("checkpoint of %d bytes, encodings %+v", len(ck), h.enc.Stats().Pages)

	for i := range ck {
		for _, x := range []byte{0x01, 0x80, 0xFF} {
			bad := bytes.Clone(ck)
			bad[i] ^= x
			before := snap(h.bk)
			if _, err := h.bk.Receive(bad); err == nil {
				t.Fatalf("byte %d ^ %#x accepted", i, x)
			}
			if after := snap(h.bk); !sameSnap(before, after) {
				t.Fatalf("byte %d ^ %#x: rejected but the backup changed", i, x)
			}
		}
	}
	for n := range len(ck) {
		mustReject(t, h.bk, ck[:n], nil)
	}
	if len(h.bk.DiskWrites()) != 0 {
		t.Fatalf("rejections left disk writes %v", h.bk.DiskWrites())
	}
	h.mustCommit(ck)
	if ws := h.bk.DiskWrites(); len(ws) != 2 || string(ws[1].Data) != "sector zero" || ws[1].Off != 0 || ws[0].Epoch != e {
		t.Fatalf("committed disk writes %+v", ws)
	}
}

func sameSnap(a, b backupSnap) bool {
	return a.mem == b.mem && a.status == b.status && a.machine == b.machine && slices.Equal(a.covered, b.covered) && a.disk == b.disk
}
