package checkpoint

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"testing"
)

// change is how a test mutates a dirty page.
type change int

const (
	changeFewBytes change = iota // 16 random bytes rewritten (memtouch-like)
	changeZero                   // page cleared
	changeRandom                 // whole page random (incompressible)
	changeSame                   // page "dirtied" but rewritten with its own contents
	numChanges
)

func (c change) String() string {
	return [...]string{"fewbytes", "zero", "random", "same"}[c]
}

// harness is a primary's memory, its Encoder, and a Backup, shared by the
// tests and benchmarks. Randomness is seeded so every failure reproduces.
type harness struct {
	tb    testing.TB
	rng   *rand.Rand
	pages uint64
	mem   []byte // the primary's guest memory
	enc   *Encoder
	bk    *Backup
	gen   uint64
	epoch uint64 // last epoch encoded
	out   []byte // reused output buffer
	// disk, if set, is the disk log the next encode carries.
	disk *DiskLog
}

func newHarness(tb testing.TB, pages uint64, seed uint64) *harness {
	tb.Helper()
	cache, err := NewPageCache(int(pages * PageSize))
	if err != nil {
		tb.Fatal(err)
	}
	bk, err := NewBackup(make([]byte, pages*PageSize), BackupConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	h := &harness{
		tb: tb, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		pages: pages, mem: make([]byte, pages*PageSize),
		enc: NewEncoder(cache), bk: bk, gen: 1,
	}
	// Start from a guest whose pages are a mixture of the three kinds.
	for pfn := range pages {
		h.mutate(pfn, change(h.rng.IntN(3)))
	}
	return h
}

func (h *harness) page(pfn uint64) []byte { return h.mem[pfn*PageSize : (pfn+1)*PageSize] }

func (h *harness) mutate(pfn uint64, c change) {
	p := h.page(pfn)
	switch c {
	case changeFewBytes:
		for range 16 {
			p[h.rng.IntN(PageSize)] = byte(h.rng.Uint32())
		}
	case changeZero:
		clear(p)
	case changeRandom:
		for i := 0; i < PageSize; i += 8 {
			binary.LittleEndian.PutUint64(p[i:], h.rng.Uint64())
		}
	case changeSame:
	}
}

// dirty picks n distinct random pages, sorted, and mutates each with a
// random change (or with only, if only >= 0).
func (h *harness) dirty(n int, only change) []uint64 {
	set := make(map[uint64]bool, n)
	for len(set) < n {
		set[h.rng.Uint64N(h.pages)] = true
	}
	pfns := make([]uint64, 0, n)
	for p := range set {
		pfns = append(pfns, p)
	}
	slices.Sort(pfns)
	for _, p := range pfns {
		c := only
		if c < 0 {
			c = change(h.rng.IntN(int(numChanges)))
		}
		h.mutate(p, c)
	}
	return pfns
}

func machineBlob(gen, epoch uint64) []byte {
	return fmt.Appendf(nil, "machine state gen=%d epoch=%d", gen, epoch)
}

// encode builds a checkpoint of kind/flags carrying pfns. It returns a
// fresh copy so tests may keep several.
func (h *harness) encode(k Kind, f Flags, epoch uint64, pfns []uint64, withHash bool) []byte {
	h.tb.Helper()
	if err := h.enc.Begin(h.out, Header{Kind: k, Flags: f, Generation: h.gen, Epoch: epoch}); err != nil {
		h.tb.Fatal(err)
	}
	for _, p := range pfns {
		if err := h.enc.AddPage(p, h.page(p)); err != nil {
			h.tb.Fatal(err)
		}
	}
	if h.disk != nil {
		if err := h.enc.SetDiskLog(*h.disk); err != nil {
			h.tb.Fatal(err)
		}
		h.disk = nil
	}
	var m []byte
	if k.commits() {
		m = machineBlob(h.gen, epoch)
	}
	out, err := h.enc.Finish(m, withHash)
	if err != nil {
		h.tb.Fatal(err)
	}
	h.out = out
	if k.commits() {
		h.epoch = epoch
	}
	return bytes.Clone(out)
}

func allPages(n uint64) []uint64 {
	p := make([]uint64, n)
	for i := range p {
		p[i] = uint64(i)
	}
	return p
}

// fullSync runs a one-message full sync to epoch h.epoch+1 and commits it.
func (h *harness) fullSync() {
	h.tb.Helper()
	ck := h.encode(KindSyncCommit, FlagSyncStart, h.epoch+1, allPages(h.pages), true)
	h.mustCommit(ck)
}

// nextEpoch dirties n pages and encodes the next epoch.
func (h *harness) nextEpoch(n int, withHash bool) []byte {
	return h.encode(KindEpoch, 0, h.epoch+1, h.dirty(n, -1), withHash)
}

func (h *harness) mustCommit(ck []byte) {
	h.tb.Helper()
	res, err := h.bk.Receive(ck)
	if err != nil {
		h.tb.Fatalf("receive: %v", err)
	}
	if !res.Committed {
		h.tb.Fatalf("receive %v: not committed", res.Header)
	}
	h.checkEqual()
}

// checkEqual asserts the backup holds exactly the primary's memory and the
// machine state of the last committed epoch.
func (h *harness) checkEqual() {
	h.tb.Helper()
	if !bytes.Equal(h.bk.Memory(), h.mem) {
		for pfn := range h.pages {
			if !bytes.Equal(h.bk.Memory()[pfn*PageSize:(pfn+1)*PageSize], h.page(pfn)) {
				h.tb.Fatalf("backup page %d differs from the primary's", pfn)
			}
		}
	}
	st := h.bk.Status()
	if st.State != StateCommitted || st.Generation != h.gen || st.Epoch != h.epoch {
		h.tb.Fatalf("backup status %+v, want committed gen=%d epoch=%d", st, h.gen, h.epoch)
	}
	if want := machineBlob(h.gen, h.epoch); !bytes.Equal(h.bk.Machine(), want) {
		h.tb.Fatalf("backup machine state %q, want %q", h.bk.Machine(), want)
	}
}

// backupSnap is everything a rejected checkpoint must leave unchanged.
type backupSnap struct {
	mem     [32]byte
	status  Status
	machine string
	covered []uint64
	disk    [32]byte
}

func snap(b *Backup) backupSnap {
	return backupSnap{sha256.Sum256(b.Memory()), b.Status(), string(b.Machine()), slices.Clone(b.covered), diskHash(b.disk)}
}

// diskHash digests a list of disk writes, epochs and offsets included.
func diskHash(ws []DiskWrite) [32]byte {
	d := sha256.New()
	for _, w := range ws {
		var hdr [20]byte
		binary.LittleEndian.PutUint64(hdr[0:], w.Epoch)
		binary.LittleEndian.PutUint64(hdr[8:], uint64(w.Off))
		binary.LittleEndian.PutUint32(hdr[16:], uint32(len(w.Data)))
		d.Write(hdr[:])
		d.Write(w.Data)
	}
	var s [32]byte
	d.Sum(s[:0])
	return s
}

// mustReject receives ck, expects an error matching want (if non-nil),
// and checks nothing changed.
func mustReject(tb testing.TB, b *Backup, ck []byte, want error) error {
	tb.Helper()
	before := snap(b)
	_, err := b.Receive(ck)
	if err == nil {
		tb.Fatalf("checkpoint accepted, want rejection (%v)", want)
	}
	if want != nil && !errors.Is(err, want) {
		tb.Fatalf("error %q does not match %q", err, want)
	}
	after := snap(b)
	if !sameSnap(before, after) {
		tb.Fatalf("rejected checkpoint (%v) changed the backup: %+v -> %+v", err, before.status, after.status)
	}
	return err
}

// reseal recomputes a checkpoint's length, checksum and commit marker after
// a test edited it, so the edit reaches the checks behind the checksum.
func reseal(ck []byte) []byte {
	if len(ck) < headerSize+trailerSize {
		return ck
	}
	binary.LittleEndian.PutUint64(ck[16:], uint64(len(ck)))
	body := ck[:len(ck)-trailerSize]
	binary.LittleEndian.PutUint32(ck[len(body):], crc32.Checksum(body, castagnoli))
	copy(ck[len(ck)-len(commitMarker):], commitMarker[:])
	return ck
}

// section is one section for build.
type section struct {
	id      SectionID
	version uint16
	payload []byte
}

// build assembles a checkpoint by hand, sealed, with any sections.
func build(h Header, secs ...section) []byte {
	b := make([]byte, headerSize)
	for _, s := range secs {
		var sh [sectionSize]byte
		binary.LittleEndian.PutUint16(sh[0:], uint16(s.id))
		binary.LittleEndian.PutUint16(sh[2:], s.version)
		binary.LittleEndian.PutUint32(sh[4:], uint32(len(s.payload)))
		b = append(append(b, sh[:]...), s.payload...)
	}
	putHeader(b, h, uint16(len(secs)), 0)
	return reseal(append(b, make([]byte, trailerSize)...))
}

// rec is a page record for pagesPayload; gap is written as given.
type rec struct {
	gap  uint64
	enc  Encoding
	data []byte
}

func pagesPayload(count uint32, recs ...rec) []byte {
	b := binary.LittleEndian.AppendUint32(nil, count)
	for _, r := range recs {
		b = binary.AppendUvarint(b, r.gap)
		b = append(b, byte(r.enc))
		switch r.enc {
		case EncLZ4, EncXORLZ4:
			b = binary.AppendUvarint(b, uint64(len(r.data)))
		}
		b = append(b, r.data...)
	}
	return b
}

func pagesSec(count uint32, recs ...rec) section {
	return section{SectionPages, 1, pagesPayload(count, recs...)}
}

func machineSec(blob string) section { return section{SectionMachine, 1, []byte(blob)} }

// diskRec is a disk write record for diskPayload, written as given.
type diskRec struct {
	epoch, off uint64
	n          uint32 // length field; data follows as given
	data       []byte
}

func diskPayload(durable uint64, count uint32, recs ...diskRec) []byte {
	b := binary.LittleEndian.AppendUint64(nil, durable)
	b = binary.LittleEndian.AppendUint32(b, count)
	for _, r := range recs {
		b = binary.LittleEndian.AppendUint64(b, r.epoch)
		b = binary.LittleEndian.AppendUint64(b, r.off)
		b = binary.LittleEndian.AppendUint32(b, r.n)
		b = append(b, r.data...)
	}
	return b
}

func diskSec(durable uint64, count uint32, recs ...diskRec) section {
	return section{SectionDisk, 1, diskPayload(durable, count, recs...)}
}

// dw is a well-formed diskRec of epoch e.
func dw(e uint64, off uint64, data string) diskRec {
	return diskRec{e, off, uint32(len(data)), []byte(data)}
}

func sortU64(s []uint64) { slices.Sort(s) }
