package dirtylog

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
	"golang.org/x/sys/unix"
)

// ringEntrySize is sizeof(struct kvm_dirty_gfn).
const ringEntrySize = 16

// vcpuRing is one vCPU's dirty ring and the index of the next entry to
// collect. ring is shared with KVM: flags are read and written atomically.
type vcpuRing struct {
	ring  []kvmapi.DirtyGFN
	fetch uint32
	// resetTo is fetch when KVM last reset every entry marked RESET in
	// ring: the entries from it to fetch are marked and not yet reset (see
	// resetRings).
	resetTo uint32
	// outOfStep is set when KVM wrote the whole ring between two resets
	// (see collectStopped): KVM's write index may then be ahead of fetch,
	// by entries it wrote over, until resync finds where it writes.
	outOfStep bool
	unmap     func() error
}

// pageSet is where collection marks the pages it takes: the harvest's
// bitmap, or the pending pages of full rings (pageList).
type pageSet interface {
	Set(p uint64)
	// Len is the number of pages there are: a page at or beyond it is an
	// error.
	Len() uint64
}

// pageList is pages in the order collected, a page perhaps more than once:
// what full rings held between two harvests. Merging it into the harvest
// costs the entries, where a bitmap of all pages would cost a pass over
// memory (2 MiB of words at 64 GiB) to merge and another to clear.
type pageList struct {
	pages []uint64
	limit uint64
}

// Set implements pageSet.
func (l *pageList) Set(p uint64) { l.pages = append(l.pages, p) }

// Len implements pageSet.
func (l *pageList) Len() uint64 { return l.limit }

// collectRing collects the entries of ring from *fetch on: while an entry's
// flags (loaded atomically, so its slot and offset are read after KVM
// published them) have KVM_DIRTY_GFN_F_DIRTY, it marks the page, stores
// KVM_DIRTY_GFN_F_RESET into the flags and advances *fetch (modulo the
// ring's length, a power of two). It stops at the first entry KVM has not
// published. It returns how many entries it collected and the first page it
// could not place; an entry it cannot place is still handed back to KVM.
func collectRing(ring []kvmapi.DirtyGFN, fetch *uint32, slots []slotPages, dst pageSet) (int, error) {
	var firstErr error
	mask := uint32(len(ring) - 1)
	n := 0
	for n < len(ring) {
		e := &ring[*fetch&mask]
		if atomic.LoadUint32(&e.Flags)&kvmapi.KVM_DIRTY_GFN_F_DIRTY == 0 {
			break
		}
		p, err := ramPage(slots, e.Slot, e.Offset)
		if err == nil && p < dst.Len() {
			dst.Set(p)
		} else if firstErr == nil {
			if err == nil {
				err = fmt.Errorf("dirty RAM page %d beyond the %d pages tracked", p, dst.Len())
			}
			firstErr = err
		}
		atomic.StoreUint32(&e.Flags, kvmapi.KVM_DIRTY_GFN_F_RESET)
		*fetch++
		n++
	}
	return n, firstErr
}

// collectStopped collects r into dst. Precondition: r's vCPU is not in
// KVM_RUN, so KVM does not write to r.
//
// KVM promises that a ring never fills: it stops the vCPU with
// KVM_EXIT_DIRTY_RING_FULL before its next entry once the ring holds its
// soft limit (the size less a reserve of 64 entries and the PML buffer), and
// the reserve absorbs what the vCPU logs before that entry. A KVM that logs
// more between two entries breaks the promise: kvm-pvm emulates up to
// pvm_emul_batch (1024) instructions per exit and logs every store it
// emulates, so it writes over entries not yet collected (the kernel warns in
// kvm_dirty_ring_push). Collecting in step with KVM takes the entries KVM
// wrote since the last reset, so taking the whole ring is the sign: then lost
// is true (pages may be missing, which is why Harvest then reports all of
// memory) and r is out of step until resync finds where KVM writes.
func collectStopped(r *vcpuRing, slots []slotPages, dst pageSet) (n int, lost bool, err error) {
	if r.outOfStep {
		if n, err = resync(r, slots, dst); err != nil {
			return n, false, err
		}
	}
	k, err := collectRing(r.ring, &r.fetch, slots, dst)
	if k == len(r.ring) {
		r.outOfStep = true
		lost = true
	}
	return n + k, lost, err
}

// resync finds where KVM writes in a ring that is out of step. Precondition:
// the ring's vCPU is not in KVM_RUN.
//
// When KVM wrote V entries over uncollected ones, collectStopped took the
// ring's size in entries and KVM reset as many, so KVM still counts V
// entries from fetch on as not yet harvested, though their flags are clear,
// and writes the next ones after them. Until it writes one there is nothing
// to do. Then the ring's published entries are one run starting V entries
// after fetch, and marking the V entries before it RESET lets KVM's reset
// walk over them and on over the run: resync moves fetch to the run, which
// the caller collects, and the ring is in step. If KVM wrote past the ring's
// size again, only over the V cleared entries (the run starts V after fetch
// and runs over it), then no entry is lost but KVM's reset cannot walk over
// V plus the run at once, since it would meet the entries it cleared on the
// way: resync collects the run, marks every entry RESET, so KVM's reset walks
// the ring once, and the ring stays out of step, now by V plus the run less
// the ring's size.
func resync(r *vcpuRing, slots []slotPages, dst pageSet) (int, error) {
	size := uint32(len(r.ring))
	mask := size - 1
	var runs, count, start uint32
	for i := uint32(0); i < size; i++ {
		if !r.published(i) {
			continue
		}
		count++
		if !r.published(i - 1) {
			runs++
			start = i
		}
	}
	switch {
	case count == 0:
		return 0, nil
	case count == size:
		return 0, nil // written over again: collectStopped takes it all
	case runs != 1:
		return 0, fmt.Errorf("dirty ring out of step with KVM after an overflow: %d runs of published entries, not one", runs)
	}
	v := (start - r.fetch) & mask
	if v+count <= size {
		for k := uint32(0); k < v; k++ {
			atomic.StoreUint32(&r.ring[(r.fetch+k)&mask].Flags, kvmapi.KVM_DIRTY_GFN_F_RESET)
		}
		r.fetch += v
		r.outOfStep = false
		return 0, nil
	}
	from := start
	n, err := collectRing(r.ring, &from, slots, dst)
	for i := range r.ring {
		atomic.StoreUint32(&r.ring[i].Flags, kvmapi.KVM_DIRTY_GFN_F_RESET)
	}
	r.fetch += size
	return n, err
}

// published says whether KVM has published entry i (modulo the ring's
// length) and it is not collected yet. Its flags are loaded atomically:
// safe while the vCPU runs and KVM writes the ring.
func (r *vcpuRing) published(i uint32) bool {
	return atomic.LoadUint32(&r.ring[i&uint32(len(r.ring)-1)].Flags)&kvmapi.KVM_DIRTY_GFN_F_DIRTY != 0
}

// markPublished marks in dst the pages of r's entries KVM has published
// and not had collected yet — those from fetch on, or, in a ring out of
// step, wherever they are (resync takes them all) — collecting nothing:
// the vCPU may be running. An entry KVM writes over while it is read (see
// collectStopped) may name another page, or none: what it serves is an
// estimate.
func markPublished(r *vcpuRing, slots []slotPages, dst pageSet) {
	size := uint32(len(r.ring))
	mark := func(i uint32) {
		e := &r.ring[i&(size-1)]
		if p, err := ramPage(slots, e.Slot, e.Offset); err == nil && p < dst.Len() {
			dst.Set(p)
		}
	}
	if r.outOfStep {
		for i := range size {
			if r.published(i) {
				mark(i)
			}
		}
		return
	}
	for n := uint32(0); n < size && r.published(r.fetch+n); n++ {
		mark(r.fetch + n)
	}
}

// distinctPages is a pageSet that keeps each page once, and forgets them
// in time that follows their number, not the memory's: DirtySoFar's
// scratch.
type distinctPages struct {
	seen  *machine.Bitmap
	pages []uint64
}

// Set implements pageSet.
func (d *distinctPages) Set(p uint64) {
	if !d.seen.Has(p) {
		d.seen.Set(p)
		d.pages = append(d.pages, p)
	}
}

// Len implements pageSet.
func (d *distinctPages) Len() uint64 { return d.seen.Len() }

// reset forgets the pages set, and returns how many there were.
func (d *distinctPages) reset() int {
	n, words := len(d.pages), d.seen.Words()
	for _, p := range d.pages {
		words[p/64] = 0 // every bit set in it is one of pages
	}
	d.pages = d.pages[:0]
	return n
}

// ringReserve is the most entries KVM keeps in reserve below a ring's size:
// its soft limit, the count at which it stops the vCPU with
// KVM_EXIT_DIRTY_RING_FULL, is the size less KVM_DIRTY_RING_RSVD_ENTRIES
// (64) and the CPU's dirty-log buffer (Intel's PML, 512 entries; none on
// AMD).
const ringReserve = 64 + 512

// collectFull collects r at its vCPU's KVM_EXIT_DIRTY_RING_FULL, as
// collectStopped does, and returns drained when it found nothing published
// in a ring out of step: then KVM counts at least its soft limit of entries
// as not harvested, all of them entries it wrote over and cleared (it wrote
// more than twice the ring's size between two collections), and would stop
// the vCPU again at once. collectFull hands the entries from fetch on back
// to KVM, as many as the smallest soft limit (the size less ringReserve),
// so KVM's reset walks them and no further than it wrote; if KVM still
// counts the ring full, the vCPU exits again and collectFull drains more.
// Pages are lost either way: collectStopped reported it when it took the
// whole ring.
func collectFull(r *vcpuRing, slots []slotPages, dst pageSet) (n int, lost, drained bool, err error) {
	n, lost, err = collectStopped(r, slots, dst)
	if n > 0 || err != nil || !r.outOfStep {
		return n, lost, false, err
	}
	size := uint32(len(r.ring))
	k := uint32(1)
	if size > ringReserve {
		k = size - ringReserve
	}
	for i := uint32(0); i < k; i++ {
		atomic.StoreUint32(&r.ring[(r.fetch+i)&(size-1)].Flags, kvmapi.KVM_DIRTY_GFN_F_RESET)
	}
	r.fetch += k
	return 0, lost, true, nil
}

// ringTracker reports vCPU writes from KVM's per-vCPU dirty rings.
type ringTracker struct {
	m     *vmm.Machine
	vmFd  int
	slots []slotPages

	// mu serialises ring collection (a full ring is collected on its vCPU's
	// thread while others run) and counting (DirtySoFar), and protects the
	// fields below and each vcpuRing's fetch index and outOfStep.
	mu    sync.Mutex
	rings []*vcpuRing
	// pending holds the pages collected from full rings since the last
	// Harvest, one per entry.
	pending pageList
	// fulls counts ring-full exits collected, for tests.
	fulls int
	// lostAll is set when a ring overflowed since the last Harvest, which
	// then reports every page and write-protects every page again in KVM;
	// overflows counts the overflows, for tests.
	lostAll   bool
	overflows int
	// rearm is set when a reset of the rings stopped early since the last
	// Harvest (see resetRings), which then write-protects every page again;
	// earlyStops counts the calls that stopped early, for tests.
	rearm      bool
	earlyStops int
	closed     bool
	// counted is DirtySoFar's scratch, made by its first call.
	counted *distinctPages
}

func newRingTracker(m *vmm.Machine) (_ *ringTracker, err error) {
	entries := m.Config().DirtyRingEntries
	if entries <= 0 {
		return nil, errors.New("dirty ring tracking: the machine was built without dirty rings (vmm.Config.DirtyRingEntries is 0)")
	}
	mem := m.Memory()
	t := &ringTracker{m: m, vmFd: m.VMFd(), slots: slotsOf(mem), pending: pageList{limit: mem.Pages()}}
	defer func() {
		if err != nil {
			t.unmapAll()
		}
	}()
	for _, v := range m.VCPUs() {
		r, err := mapRing(v.Fd(), entries)
		if err != nil {
			return nil, fmt.Errorf("mapping the dirty ring of vCPU %d: %w", v.Index(), err)
		}
		t.rings = append(t.rings, r)
	}
	m.SetDirtyRingFullHandler(t.ringFull)
	return t, nil
}

// ringFull runs on vCPU i's thread when KVM exits with
// KVM_EXIT_DIRTY_RING_FULL: it moves that ring's entries into pending and
// has KVM reset them, so the vCPU can run on.
func (t *ringTracker) ringFull(i int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("dirty ring of vCPU %d is full and its tracker is closed", i)
	}
	if i < 0 || i >= len(t.rings) {
		return fmt.Errorf("dirty ring full on vCPU %d of %d", i, len(t.rings))
	}
	r := t.rings[i]
	n, lost, drained, cerr := collectFull(r, t.slots, &t.pending)
	t.fulls++
	if lost {
		t.overflowed(i)
	}
	if err := t.resetRings(); err != nil {
		return fmt.Errorf("resetting the full dirty ring of vCPU %d: %w", i, err)
	}
	if cerr != nil {
		return fmt.Errorf("collecting the full dirty ring of vCPU %d: %w", i, cerr)
	}
	if n == 0 && !drained {
		// KVM would stop the vCPU with this exit again at once.
		return fmt.Errorf("KVM reports the dirty ring of vCPU %d full and it holds no entry to collect (out of step with KVM after an overflow)", i)
	}
	return nil
}

// resetRings has KVM reset the entries marked RESET in every ring, which
// write-protects their pages again, and returns once it has reset all of
// them. Precondition: mu is held, and no vCPU whose ring holds marked
// entries is in KVM_RUN.
//
// KVM_RESET_DIRTY_RINGS stops early when the calling thread has a signal
// pending (recent kernels, 6.18 here; the vCPU thread collecting its full
// ring is kicked for a pause, the Go runtime preempts, a child exits):
// upstream fails with EINTR, the kvm-pvm here returns success with fewer
// entries counted. Either way the entries it did not reach stay marked, KVM's
// reset index lags this side's fetch index, and the next ring-full exit
// would find nothing to collect. KVM resets a ring's entries in order, so
// resetRings calls it until the last entry marked in each ring is no
// longer marked. Upstream's early stop also drops the batch of entries it
// had reset and not yet re-protected (up to 64 pages, whose next writes KVM
// would not log), so an early stop sets rearm and the next Harvest
// write-protects every page again. (kvm-pvm here keeps that batch: with the
// rearm taken out, the signals case of TestHarvestIsExactOnKVM missed no
// page in a dozen runs of dozens of early stops each. The rearm costs it a
// pass over memory after a rare event.)
func (t *ringTracker) resetRings() error {
	for idle := 0; ; {
		n, err := kvmapi.ResetDirtyRings(t.vmFd)
		interrupted := errors.Is(err, unix.EINTR)
		if err != nil && !interrupted {
			return err
		}
		left := -1
		for i, r := range t.rings {
			if !r.resetDone() {
				left = i
			}
		}
		if interrupted || left >= 0 {
			t.rearm = true
			t.earlyStops++
		}
		if left < 0 {
			return nil
		}
		if n > 0 || interrupted {
			idle = 0
		} else if idle++; idle == maxIdleResets {
			return fmt.Errorf("KVM reset none of the entries collected from the dirty ring of vCPU %d in %d calls (out of step with KVM)", left, idle)
		}
	}
}

// resetDone says whether KVM has reset every entry of r marked RESET, the
// entries from resetTo to fetch, and then moves resetTo to fetch. KVM
// resets a ring's entries in order, so the last one marked tells.
// Precondition: r's vCPU is not in KVM_RUN.
func (r *vcpuRing) resetDone() bool {
	if r.resetTo == r.fetch {
		return true
	}
	last := &r.ring[(r.fetch-1)&uint32(len(r.ring)-1)]
	if atomic.LoadUint32(&last.Flags)&kvmapi.KVM_DIRTY_GFN_F_RESET != 0 {
		return false
	}
	r.resetTo = r.fetch
	return true
}

// maxIdleResets is how many calls of KVM_RESET_DIRTY_RINGS in a row may
// reset nothing while collected entries are left (on kvm-pvm, each stopped
// by a signal before its first entry) before resetRings gives up: KVM then
// cannot reach those entries from where it resets.
const maxIdleResets = 1000

// overflowed records that vCPU i's ring overflowed. Precondition: mu is held.
func (t *ringTracker) overflowed(i int) {
	t.lostAll = true
	t.overflows++
	slog.Warn("dirty ring overflowed: KVM logged more than the ring holds without a ring-full exit; this harvest reports all of memory",
		"vcpu", i, "entries", len(t.rings[i].ring))
}

// Harvest implements Tracker. Its cost follows the number of ring entries
// (those collected now and those full rings left pending) and the pages the
// VMM wrote, not the memory size, except after a ring overflowed: then it
// reports the whole memory. Precondition: the machine is paused (or not
// yet started).
func (t *ringTracker) Harvest(dst *machine.Bitmap) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, errors.New("dirty ring harvest: tracker closed")
	}
	if dst.Len() != t.pending.limit {
		return 0, fmt.Errorf("dirty ring harvest into a bitmap of %d pages; RAM has %d", dst.Len(), t.pending.limit)
	}
	var firstErr error
	n := 0
	for i, r := range t.rings {
		k, lost, err := collectStopped(r, t.slots, dst)
		n += k
		if lost {
			t.overflowed(i)
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("collecting the dirty ring of vCPU %d: %w", i, err)
		}
	}
	if err := t.resetRings(); err != nil {
		return 0, fmt.Errorf("dirty ring harvest: %w", err)
	}
	if firstErr != nil {
		return 0, firstErr
	}
	if t.lostAll || t.rearm {
		// After an overflow, the pages whose entries KVM wrote over are
		// unknown, were written since the last reset, and KVM never
		// re-protected them; after an interrupted reset, KVM may not have
		// re-protected the pages of the entries it reset last (see
		// resetRings), pages this harvest or an earlier one reported. Have
		// KVM write-protect every page again, so the next epoch logs its
		// first write to each.
		if err := rearmDirtyLog(t.vmFd, t.m.Memory()); err != nil {
			return 0, fmt.Errorf("dirty ring harvest, write-protecting memory again: %w", err)
		}
		t.rearm = false
	}
	if t.lostAll {
		// And report every page.
		dst.SetAll()
		n += int(dst.Len())
		t.lostAll = false
	}
	for _, p := range t.pending.pages {
		dst.Set(p) // below limit, which is dst's length: collectRing checked
	}
	n += len(t.pending.pages)
	t.pending.pages = t.pending.pages[:0]
	n += t.m.Memory().TakeVMMDirty(dst.Words())
	return n, nil
}

// DirtySoFar implements Tracker, the vCPUs running: the pages of the
// entries KVM has published in the rings since they were last collected
// (read, not collected) and of those full rings left pending, each once
// (kvm-pvm logs a page at every store it emulates: 535 entries held one
// page), and the pages the VMM wrote. After an overflow, which the next
// Harvest answers with every page, it counts every page.
func (t *ringTracker) DirtySoFar() (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, errors.New("dirty ring count: tracker closed")
	}
	if t.lostAll {
		return int(t.pending.limit), nil
	}
	if t.counted == nil {
		t.counted = &distinctPages{seen: machine.NewBitmap(t.pending.limit)}
	}
	for _, p := range t.pending.pages {
		t.counted.Set(p)
	}
	for _, r := range t.rings {
		markPublished(r, t.slots, t.counted)
	}
	return t.counted.reset() + t.m.Memory().CountVMMDirty(), nil
}

// Close unmaps the rings. Precondition: the machine is paused or stopped; a
// ring that fills afterwards stops the machine with an error.
func (t *ringTracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	return t.unmapAll()
}

func (t *ringTracker) unmapAll() error {
	var errs []error
	for _, r := range t.rings {
		errs = append(errs, r.unmap())
	}
	t.rings = nil
	return errors.Join(errs...)
}
