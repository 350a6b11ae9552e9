package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// Every way a checkpoint can be wrong is rejected with the matching error,
// and leaves the backup's memory, machine state and position untouched;
// afterwards the genuine next epoch still commits.
func TestRejections(t *testing.T) {
	h := newHarness(t, 32, 11)
	h.gen = 2
	h.fullSync()
	h.disk = &DiskLog{Durable: h.epoch, Writes: []DiskWrite{{h.epoch + 1, 1024, []byte("kept")}}}
	h.mustCommit(h.nextEpoch(8, false))

	g, e, np := h.gen, h.epoch, h.pages
	next := Header{Kind: KindEpoch, Generation: g, Epoch: e + 1, MemPages: np}
	hdr := func(mod func(*Header)) Header { x := next; mod(&x); return x }
	raw := bytes.Repeat([]byte{0xA5}, PageSize)
	var lzPage [PageSize]byte
	n, err := lz4.CompressBlock(raw, lzPage[:], nil)
	if err != nil || n == 0 {
		t.Fatal(err)
	}
	lzData := lzPage[:n]
	short := []byte{0xA0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10} // valid lz4, decodes to 10 bytes
	m := machineSec("m")

	h.disk = &DiskLog{Durable: e - 1, Writes: []DiskWrite{{e + 1, 0, []byte("genuine")}}}
	genuine := h.encode(KindEpoch, 0, e+1, h.dirty(6, -1), true)
	syncStart := Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: g, Epoch: e + 1, MemPages: np}
	flip := func(i int, x byte) []byte { c := bytes.Clone(genuine); c[i] ^= x; return c }
	resealed := func(mod func([]byte) []byte) []byte { return reseal(mod(bytes.Clone(genuine))) }

	cases := []struct {
		name string
		ck   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"five bytes", genuine[:5], ErrTruncated},
		{"header only", genuine[:headerSize], ErrTruncated},
		{"cut by one", genuine[:len(genuine)-1], ErrTruncated},
		{"cut in half", genuine[:len(genuine)/2], ErrTruncated},
		{"trailing byte", append(bytes.Clone(genuine), 0), ErrTrailingBytes},
		{"wrong magic", flip(0, 0x20), ErrBadMagic},
		{"future version", resealed(func(c []byte) []byte { c[8] = 2; return c }), ErrVersion},
		{"bit flip in pages", flip(headerSize+20, 0x01), ErrChecksum},
		{"bit flip in checksum", flip(len(genuine)-trailerSize, 0x80), ErrChecksum},
		{"torn commit marker", flip(len(genuine)-1, 0xFF), ErrNoCommit},
		{"reserved header field", resealed(func(c []byte) []byte { c[14] = 1; return c }), ErrBadHeader},
		{"kind zero", build(hdr(func(x *Header) { x.Kind = 0 }), pagesSec(0), m), ErrBadKind},
		{"kind unknown", build(hdr(func(x *Header) { x.Kind = 4 }), pagesSec(0), m), ErrBadKind},
		{"unknown flag", build(hdr(func(x *Header) { x.Flags = 0x80 }), pagesSec(0), m), ErrBadFlags},
		{"sync-start on epoch", build(hdr(func(x *Header) { x.Flags = FlagSyncStart }), pagesSec(0), m), ErrBadFlags},
		{"send-hashes on epoch", build(hdr(func(x *Header) { x.Flags = FlagSendHashes }), pagesSec(0), m), ErrBadFlags},
		{"send-hashes on a sync's commit", build(hdr(func(x *Header) { x.Kind, x.Flags = KindSyncCommit, FlagSyncStart|FlagSendHashes }), pagesSec(0), m), ErrBadFlags},
		{"held on a sync round", build(hdr(func(x *Header) { x.Kind, x.Flags = KindSyncRound, FlagSyncStart|FlagHeld }), pagesSec(0)), ErrBadFlags},
		{"send-hashes on a round that goes on with a sync", build(hdr(func(x *Header) { x.Kind, x.Flags = KindSyncRound, FlagSendHashes }), pagesSec(0)), ErrBadFlags},
		{"generation zero", build(hdr(func(x *Header) { x.Generation = 0 }), pagesSec(0), m), ErrBadHeader},
		{"zero memory", build(hdr(func(x *Header) { x.MemPages = 0 }), pagesSec(0), m), ErrBadMemSize},
		{"other memory size", build(hdr(func(x *Header) { x.MemPages = np + 1 }), pagesSec(0), m), ErrMemSizeMismatch},
		{"unknown section", build(next, pagesSec(0), m, section{9, 1, nil}), ErrUnknownSection},
		{"zero section id", build(next, section{0, 1, nil}, pagesSec(0), m), ErrUnknownSection},
		{"section version", build(next, pagesSec(0), section{SectionMachine, 2, []byte("m")}), ErrSectionVersion},
		{"duplicate section", build(next, pagesSec(0), m, m), ErrDuplicateSection},
		{"no pages section", build(next, m), ErrMissingSection},
		{"no machine state", build(next, pagesSec(0)), ErrMissingSection},
		{"section longer than rest", resealed(func(c []byte) []byte {
			binary.LittleEndian.PutUint32(c[headerSize+4:], 1<<30)
			return c
		}), ErrBadSection},
		{"section count too high", resealed(func(c []byte) []byte { c[12]++; return c }), ErrBadSection},
		{"section count too low", resealed(func(c []byte) []byte { c[12]--; return c }), ErrTrailingBytes},
		{"memhash wrong size", build(next, pagesSec(0), m, section{SectionMemHash, 1, []byte{1, 2}}), ErrBadSection},
		{"memhash wrong algorithm", build(next, pagesSec(0), m, section{SectionMemHash, 1, make([]byte, memHashSize)}), ErrBadSection},
		{"memhash mismatch", resealed(func(c []byte) []byte { c[len(c)-trailerSize-1] ^= 1; return c }), ErrMemHash},
		{"page count beyond bytes", build(next, pagesSec(0xFFFFFFFF, rec{1, EncZero, nil}), m), ErrBadSection},
		{"page count beyond memory", build(next, section{SectionPages, 1, append(pagesPayload(uint32(np+1)), make([]byte, 2*np+2)...)}, m), ErrBadSection},
		{"pages section without count", build(next, section{SectionPages, 1, []byte{1}}, m), ErrBadSection},
		{"bytes after records", build(next, section{SectionPages, 1, append(pagesPayload(1, rec{1, EncZero, nil}), 0, 0)}, m), ErrBadSection},
		{"count above records", build(next, pagesSec(2, rec{1, EncZero, nil}), m), ErrBadSection},
		{"record cut short", build(next, pagesSec(2, rec{1, EncZero, nil}, rec{1, EncLZ4, nil}), m), ErrBadPage},
		{"duplicate page", build(next, pagesSec(2, rec{3, EncZero, nil}, rec{0, EncZero, nil}), m), ErrDuplicatePage},
		{"page out of range", build(next, pagesSec(1, rec{np, EncZero, nil}), m), ErrPageRange},
		{"second page out of range", build(next, pagesSec(2, rec{np - 1, EncZero, nil}, rec{1, EncZero, nil}), m), ErrPageRange},
		{"gap overflows", build(next, pagesSec(2, rec{5, EncZero, nil}, rec{^uint64(0) - 2, EncZero, nil}), m), ErrPageRange},
		{"encoding zero", build(next, pagesSec(1, rec{1, 0, nil}), m), ErrBadPage},
		{"encoding unknown", build(next, pagesSec(1, rec{1, 5, nil}), m), ErrBadPage},
		{"raw page short", build(next, pagesSec(1, rec{1, EncRaw, raw[:100]}), m), ErrBadPage},
		{"lz4 empty", build(next, pagesSec(1, rec{1, EncLZ4, nil}), m), ErrBadPage},
		{"lz4 too long", build(next, pagesSec(1, rec{1, EncLZ4, raw[:lz4Limit+1]}), m), ErrBadPage},
		{"lz4 garbage", build(next, pagesSec(1, rec{1, EncLZ4, bytes.Repeat([]byte{0xFF}, 40)}), m), ErrBadPage},
		{"lz4 decodes short", build(next, pagesSec(1, rec{1, EncLZ4, short}), m), ErrBadPage},
		{"xorlz4 decodes short", build(next, pagesSec(1, rec{1, EncXORLZ4, short}), m), ErrBadPage},
		{"epoch skips ahead", build(hdr(func(x *Header) { x.Epoch = e + 2 }), pagesSec(0), m), ErrEpochOrder},
		{"epoch replayed", build(hdr(func(x *Header) { x.Epoch = e }), pagesSec(0), m), ErrEpochOrder},
		{"stale generation", build(hdr(func(x *Header) { x.Generation = g - 1 }), pagesSec(0), m), ErrStaleGeneration},
		{"stale generation sync", build(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: g - 1, Epoch: 100, MemPages: np}, pagesSec(0)), ErrStaleGeneration},
		{"new generation without sync", build(hdr(func(x *Header) { x.Generation = g + 1 }), pagesSec(0), m), ErrEpochOrder},
		{"sync to the past", build(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: g, Epoch: e, MemPages: np}, pagesSec(0)), ErrEpochOrder},
		{"sync round not started", build(Header{Kind: KindSyncRound, Generation: g, Epoch: e + 1, MemPages: np}, pagesSec(0)), ErrNotSyncing},
		{"sync round with machine", build(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: g, Epoch: e + 1, MemPages: np}, pagesSec(0), m), ErrForbiddenSection},
		{"sync round with memhash", build(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: g, Epoch: e + 1, MemPages: np}, pagesSec(0), section{SectionMemHash, 1, append([]byte{byte(HashRangeSHA256)}, make([]byte, 32)...)}), ErrForbiddenSection},
		{"xor without base", build(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: g, Epoch: e + 1, MemPages: np}, pagesSec(1, rec{1, EncXORLZ4, lzData})), ErrNoBase},
		{"disk on a sync round", build(Header{Kind: KindSyncRound, Flags: FlagSyncStart, Generation: g, Epoch: e + 1, MemPages: np}, pagesSec(0), diskSec(e, 0)), ErrForbiddenSection},
		{"disk section version", build(next, pagesSec(0), m, section{SectionDisk, 2, diskPayload(e, 0)}), ErrSectionVersion},
		{"duplicate disk section", build(next, pagesSec(0), m, diskSec(e, 0), diskSec(e, 0)), ErrDuplicateSection},
		{"disk section without header", build(next, pagesSec(0), m, section{SectionDisk, 1, []byte{1, 2, 3}}), ErrBadSection},
		{"disk durable ahead", build(next, pagesSec(0), m, diskSec(e+2, 0)), ErrBadSection},
		{"disk count beyond bytes", build(next, pagesSec(0), m, diskSec(e, 1000, dw(e+1, 0, "x"))), ErrBadSection},
		{"disk count above writes", build(next, pagesSec(0), m, diskSec(e, 2, dw(e+1, 0, "x"), diskRec{e + 1, 0, 0, nil})), ErrBadSection},
		{"disk bytes after writes", build(next, pagesSec(0), m, section{SectionDisk, 1, append(diskPayload(e, 1, dw(e+1, 0, "x")), 0)}), ErrBadSection},
		{"disk write longer than rest", build(next, pagesSec(0), m, diskSec(e, 1, diskRec{e + 1, 0, 5, []byte("x")})), ErrBadDiskWrite},
		{"disk write length huge", build(next, pagesSec(0), m, diskSec(e, 1, diskRec{e + 1, 0, 0xFFFFFFFF, []byte("x")})), ErrBadDiskWrite},
		{"disk offset negative", build(next, pagesSec(0), m, diskSec(e, 1, dw(e+1, 1<<63, "x"))), ErrBadDiskWrite},
		{"disk offset overflows", build(next, pagesSec(0), m, diskSec(e, 1, dw(e+1, 1<<63-1, "xy"))), ErrBadDiskWrite},
		{"disk write already durable", build(next, pagesSec(0), m, diskSec(e+1, 1, dw(e+1, 0, "x"))), ErrBadDiskWrite},
		{"disk write of another epoch", build(next, pagesSec(0), m, diskSec(e-1, 1, dw(e, 0, "x"))), ErrBadDiskWrite},
		{"disk write of a future epoch", build(next, pagesSec(0), m, diskSec(e, 1, dw(e+2, 0, "x"))), ErrBadDiskWrite},
		{"disk writes out of order", build(syncStart, pagesSec(0), m, diskSec(e-1, 2, dw(e+1, 0, "x"), dw(e, 0, "y"))), ErrBadDiskWrite},
		{"incomplete one-message sync", build(Header{Kind: KindSyncCommit, Flags: FlagSyncStart, Generation: g, Epoch: e + 1, MemPages: np}, pagesSec(1, rec{1, EncLZ4, lzData}), m), ErrIncompleteSync},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := mustReject(t, h.bk, tc.ck, tc.want)
			t.Logf("%v", err)
		})
	}

	// The named errors carry what was wrong.
	var us *UnknownSectionError
	if err := mustReject(t, h.bk, build(next, pagesSec(0), m, section{9, 1, nil}), nil); !errors.As(err, &us) || us.ID != 9 {
		t.Errorf("unknown section error %v does not name section 9", err)
	}
	var oe *OrderError
	if err := mustReject(t, h.bk, build(hdr(func(x *Header) { x.Epoch = e + 7 }), pagesSec(0), m), nil); !errors.As(err, &oe) ||
		oe.Got.Epoch != e+7 || oe.HaveEpoch != e || !oe.HaveValid {
		t.Errorf("order error %v does not say expected %d, got %d", err, e+1, e+7)
	}

	h.mustCommit(genuine)
	if ws := h.bk.DiskWrites(); len(ws) != 2 || string(ws[0].Data) != "kept" || string(ws[1].Data) != "genuine" {
		t.Fatalf("disk writes kept after the rejections: %s", describe(ws))
	}
	h.mustCommit(h.nextEpoch(8, true))
}

func TestRejectionsWhileSyncing(t *testing.T) {
	h := newHarness(t, 16, 12)
	np := h.pages
	round := h.encode(KindSyncRound, FlagSyncStart, 1, allPages(8), false)
	if _, err := h.bk.Receive(round); err != nil {
		t.Fatal(err)
	}
	m := machineSec("m")
	mustReject(t, h.bk, build(Header{Kind: KindSyncCommit, Generation: 1, Epoch: 2, MemPages: np}, pagesSec(0), m), ErrEpochOrder)
	mustReject(t, h.bk, build(Header{Kind: KindEpoch, Generation: 1, Epoch: 2, MemPages: np}, pagesSec(0), m), ErrEpochOrder)
	// Pages 8..15 were never sent: a commit without them is incomplete.
	mustReject(t, h.bk, build(Header{Kind: KindSyncCommit, Generation: 1, Epoch: 1, MemPages: np}, pagesSec(1, rec{9, EncZero, nil}), m), ErrIncompleteSync)
	// A delta for a page not yet sent in this sync has no base.
	var buf [PageSize]byte
	n, _ := lz4.CompressBlock(make([]byte, PageSize), buf[:], nil)
	mustReject(t, h.bk, build(Header{Kind: KindSyncRound, Generation: 1, Epoch: 1, MemPages: np}, pagesSec(1, rec{12, EncXORLZ4, buf[:n]})), ErrNoBase)
	h.epoch = 1
	h.mustCommit(h.encode(KindSyncCommit, 0, 1, allPages(np)[8:], false))
}

func TestMachineCheckRejects(t *testing.T) {
	h := newHarness(t, 16, 13)
	refuse := errors.New("vcpu state version 9 unknown")
	var seen []byte
	bk, err := NewBackup(make([]byte, len(h.mem)), BackupConfig{CheckMachine: func(hd Header, blob []byte) error {
		seen = append(seen[:0], blob...)
		if hd.Epoch == 2 {
			return refuse
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.bk = bk
	h.fullSync()
	if string(seen) != string(machineBlob(h.gen, 1)) {
		t.Fatalf("check saw %q", seen)
	}
	ck := h.nextEpoch(5, false)
	if err := mustReject(t, bk, ck, ErrMachineState); !errors.Is(err, refuse) {
		t.Fatalf("error %v does not carry the callback's reason", err)
	}
}
