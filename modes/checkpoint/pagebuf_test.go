package checkpoint

import (
	"bytes"
	"math/rand"
	"testing"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"golang.org/x/sys/unix"
)

// resident counts buf's whole pages that are in memory (mincore). buf must
// start on a page.
func resident(t *testing.T, buf []byte) int {
	t.Helper()
	vec := make([]byte, len(buf)/format.PageSize)
	if err := mincore(buf[:len(vec)*format.PageSize], vec); err != nil {
		t.Fatalf("mincore: %v", err)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestPageBuffersPrepareFaultsIn checks that the buffer a pause takes is
// in memory before the pause: made fresh, Go's large allocation usually is
// not (where it happens to be, this passes without proving much;
// TestFaultIn shows faultIn itself on memory known untouched).
func TestPageBuffersPrepareFaultsIn(t *testing.T) {
	const pages = 512
	b := newPageBuffers(2)
	b.prepare(pages)
	buf := b.take(pages * format.PageSize)
	if want := pages + pages/2; cap(buf) != want*format.PageSize {
		t.Fatalf("prepared %d pages of room, want %d", cap(buf)/format.PageSize, want)
	}
	if n, want := resident(t, buf[:cap(buf)]), cap(buf)/format.PageSize; n != want {
		t.Fatalf("%d of the prepared buffer's %d pages are in memory", n, want)
	}
}

// TestFaultIn checks both ways faultIn works, on memory never touched: a
// buffer that starts on a page (madvise), and one that does not (madvise
// refuses it; every page is written).
func TestFaultIn(t *testing.T) {
	const pages = 256
	for _, skip := range []int{0, 1} {
		mem, err := unix.Mmap(-1, 0, (pages+1)*format.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Munmap(mem)
		if n := resident(t, mem); n != 0 {
			t.Fatalf("%d pages of a fresh mapping are in memory already", n)
		}
		faultIn(mem[skip : skip+pages*format.PageSize])
		if n := resident(t, mem[:pages*format.PageSize]); n != pages {
			t.Errorf("buffer at page offset %d: %d of %d pages are in memory after faultIn", skip, n, pages)
		}
		if mem[skip] != 0 {
			t.Errorf("faultIn changed the buffer's contents")
		}
	}
}

// TestPageBuffersReuse checks that a dirty count creeping up reuses the
// buffer it had (a new one costs its faults), and that prepare picks the
// largest spare one.
func TestPageBuffersReuse(t *testing.T) {
	b := newPageBuffers(3)
	b.prepare(1000)
	first := b.take(1000 * format.PageSize)
	b.recycle(first)
	if b.prepare(1200) { // 1,200 pages and minSpare more fit in 1,500
		t.Error("prepare reports it made a buffer for 1,200 pages where the spare 1,500 fit")
	}
	if got := b.take(1200 * format.PageSize); &got[:1][0] != &first[:1][0] {
		t.Fatal("prepare made a new buffer for 1,200 pages where the spare 1,500 fit")
	}

	small := make([]byte, 0, 10*format.PageSize)
	b.recycle(small)
	b.recycle(first)
	b.prepare(900)
	if got := b.take(900 * format.PageSize); &got[:1][0] != &first[:1][0] {
		t.Fatal("prepare did not take the spare buffer large enough")
	}
	if got := b.take(5 * format.PageSize); &got[:1][0] != &small[:1][0] {
		t.Fatal("the smaller spare was not kept for later")
	}
}

// TestCopyPagesInChunks checks the pause's copy of runs longer than
// format.CopyChunk, which it copies a chunk at a time: every dirty page, once,
// in order.
func TestCopyPagesInChunks(t *testing.T) {
	chunk := uint64(format.CopyChunk / format.PageSize)
	pages := 2*chunk + 10
	g := newSimGuest(pages)
	for i := range g.mem {
		g.mem[i] = byte(i/format.PageSize) ^ byte(i)
	}
	dirty := machine.NewBitmap(pages)
	var want []byte
	dirty.Set(0)
	for q := uint64(3); q < 3+2*chunk+1; q++ { // a run of two chunks and a page
		dirty.Set(q)
	}
	dirty.Set(pages - 1)
	for q := range pages {
		if dirty.Has(q) {
			want = append(want, g.mem[q*format.PageSize:(q+1)*format.PageSize]...)
		}
	}
	p := &Primary{guest: g, buffers: newPageBuffers(1), cfg: Config{CopyAfterResume: CopyNever}}
	c := &capture{}
	p.copyPages(c, dirty)
	if len(c.pfns) != dirty.Count() || !bytes.Equal(c.pages, want) {
		t.Fatalf("copied %d pages (%d bytes) for %d dirty pages; contents equal: %v", len(c.pfns), len(c.pages), dirty.Count(), bytes.Equal(c.pages, want))
	}
}

// TestPrepareBufferCountsDirtyPages checks that the pause's buffer is made
// for the pages the guest has dirtied so far where it can count them
// (machine.DirtyCounter), not for the guess from the last pause, which a
// jump in the dirty count beats; a sync's commit adds the pages harvested
// already.
func TestPrepareBufferCountsDirtyPages(t *testing.T) {
	const dirtied = 3000
	for _, known := range []int{0, 500} {
		g := newSimGuest(8192)
		g.mu.Lock()
		for q := range uint64(dirtied) {
			g.dirty.Set(q)
		}
		g.mu.Unlock()
		p := &Primary{guest: g, buffers: newPageBuffers(1)}
		p.prepareBuffer(known, 10)
		if got, want := cap(p.buffers.ready)/format.PageSize, (known+dirtied)*9/8; got < want {
			t.Errorf("%d pages known, %d dirtied since: a buffer for %d pages, want %d or more", known, dirtied, got, want)
		}
	}
}

// growingGuest counts more dirty pages each time it is asked, as a guest
// does while a buffer is made.
type growingGuest struct {
	*simGuest
	counts []int
	asked  int
}

func (g *growingGuest) DirtySoFar() (int, error) {
	n := g.counts[min(g.asked, len(g.counts)-1)]
	g.asked++
	return n, nil
}

// TestPrepareBufferCountsAgain checks that prepareBuffer counts again after
// making a buffer, since the guest dirtied more meanwhile, and makes a
// larger one if the count outgrew it; and stops once one fits.
func TestPrepareBufferCountsAgain(t *testing.T) {
	g := &growingGuest{simGuest: newSimGuest(64), counts: []int{19472, 32770, 32770, 40000}}
	p := &Primary{guest: g, buffers: newPageBuffers(1)}
	p.prepareBuffer(0, 0)
	if got, want := cap(p.buffers.ready)/format.PageSize, 32770*9/8; got < want || g.asked != 3 {
		t.Fatalf("counts 19,472 then 32,770 then 32,770: a buffer for %d pages after %d counts; want %d pages or more after 3", got, g.asked, want)
	}
}

// TestEncodeBoundHoldsTheCheckpoint checks that a checkpoint of pages that
// do not compress, the largest kind, fits the buffer the sender makes for
// it (encodeBound), so the encoder's appends never grow it (which would
// copy all encoded so far in one move); and that each page takes no more
// than encodeBound gives it, apart from its slack.
func TestEncodeBoundHoldsTheCheckpoint(t *testing.T) {
	const pages = 300
	r := rand.New(rand.NewSource(1))
	round := format.Header{Kind: format.KindSyncRound, Flags: format.FlagSyncStart, Generation: 1, Epoch: 1}
	encode := func(c *capture, buf []byte) []byte {
		t.Helper()
		cache, err := format.NewPageCache(4 * pages * format.PageSize)
		if err != nil {
			t.Fatal(err)
		}
		enc := format.NewEncoder(cache)
		if err := enc.Begin(buf, c.hdr); err != nil {
			t.Fatal(err)
		}
		for i, pfn := range c.pfns {
			if err := enc.AddPage(pfn, c.pages[i*format.PageSize:(i+1)*format.PageSize]); err != nil {
				t.Fatal(err)
			}
		}
		data, err := enc.Finish(nil, false)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	c := &capture{hdr: round, pages: make([]byte, pages*format.PageSize)}
	r.Read(c.pages)
	for i := range uint64(pages) {
		c.pfns = append(c.pfns, 3*i+200) // gaps of more than one page
	}
	buf := make([]byte, 0, encodeBound(c))
	data := encode(c, buf)
	if &data[:1][0] != &buf[:1][0] {
		t.Fatalf("%d pages that do not compress encoded in %d bytes, beyond the %d encodeBound gave", pages, len(data), cap(buf))
	}
	empty := encode(&capture{hdr: round}, nil)
	if perPage := (len(data) - len(empty)) / pages; perPage > encodeBound(c)/pages-encodeSlack/pages {
		t.Fatalf("a page that does not compress takes %d bytes, more than encodeBound gives it", perPage)
	}
}
