package dirtylog

import (
	"fmt"
	"math/bits"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// clearChunk is one KVM_CLEAR_DIRTY_LOG call: the slot's pages
// [first, first+count), given by the bitmap words [first/64, ...).
type clearChunk struct {
	first uint64 // a multiple of 64
	count uint64 // a multiple of 64, unless the chunk ends at the slot's end
}

// clearGap is how many all-zero words may separate two chunks before they
// are cleared by separate calls: a call costs far more than KVM skipping a
// few zero words.
const clearGap = 8

// clearChunks returns the KVM_CLEAR_DIRTY_LOG ranges that re-protect every
// page set in log (the slot's dirty bitmap, one bit per page of a slot of
// pages pages) and skip runs of more than clearGap zero words.
func clearChunks(log []uint64, pages uint64) []clearChunk {
	return appendClearChunks(nil, log, pages)
}

// appendClearChunks appends clearChunks(log, pages) to out.
func appendClearChunks(out []clearChunk, log []uint64, pages uint64) []clearChunk {
	words := (pages + 63) / 64
	for i := uint64(0); i < words; {
		if log[i] == 0 {
			i++
			continue
		}
		start, end := i, i+1 // words [start, end) hold set bits
		for j := end; j < words && j <= end+clearGap; j++ {
			if log[j] != 0 {
				end = j + 1
			}
		}
		c := clearChunk{first: start * 64, count: (end - start) * 64}
		if c.first+c.count > pages {
			c.count = pages - c.first
		}
		out = append(out, c)
		i = end
	}
	return out
}

// bitmapTracker reports vCPU writes from KVM's per-slot dirty bitmaps with
// manual re-protection.
type bitmapTracker struct {
	mem   *vmm.GuestMemory
	vmFd  int
	slots []slotPages
	// logs holds each slot's bitmap as KVM_GET_DIRTY_LOG returns it, and
	// chunks the CLEAR_DIRTY_LOG calls of one slot's harvest. Only Harvest
	// and DirtySoFar use them, never concurrently.
	logs   [][]uint64
	chunks []clearChunk
}

func newBitmapTracker(m *vmm.Machine) (*bitmapTracker, error) {
	if n := m.Config().DirtyRingEntries; n > 0 {
		return nil, fmt.Errorf("dirty bitmap tracking: the machine was built with dirty rings of %d entries, which replace KVM's bitmap", n)
	}
	if err := kvmapi.EnableCapability(m.VMFd(), kvmapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, kvmapi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE); err != nil {
		return nil, fmt.Errorf("enabling manual dirty-log protection: %w", err)
	}
	t := &bitmapTracker{mem: m.Memory(), vmFd: m.VMFd(), slots: slotsOf(m.Memory())}
	for _, s := range t.slots {
		t.logs = append(t.logs, make([]uint64, (s.pages+63)/64))
	}
	return t, nil
}

// Harvest implements Tracker. KVM_GET_DIRTY_LOG copies each slot's whole
// bitmap, so a harvest costs passes over one word per 64 pages of memory
// (the copy, the scan for CLEAR_DIRTY_LOG's chunks, the OR into dst) and a
// CLEAR_DIRTY_LOG per chunk of dirty pages: only what was harvested is
// re-protected. Precondition: the machine is paused (or not yet started).
func (t *bitmapTracker) Harvest(dst *machine.Bitmap) (int, error) {
	if dst.Len() != t.mem.Pages() {
		return 0, fmt.Errorf("dirty bitmap harvest into a bitmap of %d pages; RAM has %d", dst.Len(), t.mem.Pages())
	}
	n := 0
	for i, s := range t.slots {
		log := t.logs[i]
		if err := kvmapi.GetDirtyLog(t.vmFd, s.id, log); err != nil {
			return 0, fmt.Errorf("dirty bitmap harvest: %w", err)
		}
		t.chunks = appendClearChunks(t.chunks[:0], log, s.pages)
		for _, c := range t.chunks {
			w := log[c.first/64 : (c.first+c.count+63)/64]
			if err := kvmapi.ClearDirtyLogPages(t.vmFd, s.id, c.first, uint32(c.count), w); err != nil {
				return 0, fmt.Errorf("dirty bitmap harvest: %w", err)
			}
		}
		n += orShifted(dst.Words(), log, s.first, s.pages)
	}
	return n + t.mem.TakeVMMDirty(dst.Words()), nil
}

// DirtySoFar implements Tracker: with manual protection,
// KVM_GET_DIRTY_LOG only copies each slot's bitmap out, clearing and
// re-protecting nothing, so it may run while the vCPUs do. Its cost is a
// copy and a count of one bit per page of memory.
func (t *bitmapTracker) DirtySoFar() (int, error) {
	n := 0
	for i, s := range t.slots {
		log := t.logs[i]
		if err := kvmapi.GetDirtyLog(t.vmFd, s.id, log); err != nil {
			return 0, fmt.Errorf("counting dirty pages: %w", err)
		}
		for j, w := range log {
			if rem := s.pages - uint64(j)*64; rem < 64 {
				w &= 1<<rem - 1
			}
			n += bits.OnesCount64(w)
		}
	}
	return n + t.mem.CountVMMDirty(), nil
}

// orShifted ORs src (bits for pages [0, pages)) into dst at page offset
// first, and returns how many bits of src it took.
func orShifted(dst, src []uint64, first, pages uint64) int {
	sh := first % 64
	base := first / 64
	n := 0
	for i := uint64(0); i < (pages+63)/64; i++ {
		w := src[i]
		if rem := pages - i*64; rem < 64 {
			w &= 1<<rem - 1
		}
		if w == 0 {
			continue
		}
		n += bits.OnesCount64(w)
		dst[base+i] |= w << sh
		if sh != 0 {
			dst[base+i+1] |= w >> (64 - sh)
		}
	}
	return n
}

// Close implements Tracker. Manual protection stays enabled on the VM.
func (t *bitmapTracker) Close() error { return nil }
