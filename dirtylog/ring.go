package dirtylog

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// ringEntrySize is sizeof(struct kvm_dirty_gfn).
const ringEntrySize = 16

// vcpuRing is one vCPU's dirty ring and the index of the next entry to
// collect. ring is shared with KVM: flags are read and written atomically.
type vcpuRing struct {
	ring  []kvmapi.DirtyGFN
	fetch uint32
	unmap func() error
}

// collectRing collects the entries of ring from *fetch on: while an entry's
// flags (loaded atomically, so its slot and offset are read after KVM
// published them) have KVM_DIRTY_GFN_F_DIRTY, it marks the page, stores
// KVM_DIRTY_GFN_F_RESET into the flags and advances *fetch (modulo the
// ring's length, a power of two). It stops at the first entry KVM has not
// published. It returns how many entries it collected and the first page it
// could not place; an entry it cannot place is still handed back to KVM.
func collectRing(ring []kvmapi.DirtyGFN, fetch *uint32, slots []slotPages, dst *Bitmap) (int, error) {
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

// ringTracker reports vCPU writes from KVM's per-vCPU dirty rings.
type ringTracker struct {
	m     *vmm.Machine
	vmFd  int
	slots []slotPages

	// mu serialises ring collection (a full ring is collected on its vCPU's
	// thread while others run) and protects pending, closed and each
	// vcpuRing's fetch index.
	mu    sync.Mutex
	rings []*vcpuRing
	// pending holds the pages collected from full rings since the last
	// Harvest, pendingN how many entries that was (0: pending is empty, and
	// Harvest need not scan it).
	pending  *Bitmap
	pendingN int
	// fulls counts ring-full exits collected, for tests.
	fulls  int
	closed bool
}

func newRingTracker(m *vmm.Machine) (_ *ringTracker, err error) {
	entries := m.Config().DirtyRingEntries
	if entries <= 0 {
		return nil, errors.New("dirty ring tracking: the machine was built without dirty rings (vmm.Config.DirtyRingEntries is 0)")
	}
	mem := m.Memory()
	t := &ringTracker{m: m, vmFd: m.VMFd(), slots: slotsOf(mem), pending: NewBitmap(mem.Pages())}
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
	n, cerr := collectRing(r.ring, &r.fetch, t.slots, t.pending)
	t.pendingN += n
	t.fulls++
	if _, err := kvmapi.ResetDirtyRings(t.vmFd); err != nil {
		return fmt.Errorf("resetting the full dirty ring of vCPU %d: %w", i, err)
	}
	if cerr != nil {
		return fmt.Errorf("collecting the full dirty ring of vCPU %d: %w", i, cerr)
	}
	return nil
}

// Harvest implements Tracker. Its cost follows the number of ring entries,
// not the memory size, except for the VMM bitmap's scan (owned by vmm) and,
// after a ring-full exit, one pass over the pending bitmap. Precondition: the
// machine is paused (or not yet started).
func (t *ringTracker) Harvest(dst *Bitmap) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, errors.New("dirty ring harvest: tracker closed")
	}
	if dst.Len() != t.pending.Len() {
		return 0, fmt.Errorf("dirty ring harvest into a bitmap of %d pages; RAM has %d", dst.Len(), t.pending.Len())
	}
	var firstErr error
	n := 0
	for i, r := range t.rings {
		k, err := collectRing(r.ring, &r.fetch, t.slots, dst)
		n += k
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("collecting the dirty ring of vCPU %d: %w", i, err)
		}
	}
	if _, err := kvmapi.ResetDirtyRings(t.vmFd); err != nil {
		return 0, fmt.Errorf("dirty ring harvest: %w", err)
	}
	if firstErr != nil {
		return 0, firstErr
	}
	if t.pendingN > 0 {
		dst.Or(t.pending)
		t.pending.Clear()
		n += t.pendingN
		t.pendingN = 0
	}
	n += t.m.Memory().TakeVMMDirty(dst.Words())
	return n, nil
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
