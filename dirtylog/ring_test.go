package dirtylog

import (
	"slices"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// twoSlots mirrors a machine of 3 GiB + 1 GiB: slot 1 starts at RAM page
// 786432, at GPA 4 GiB.
var twoSlots = []slotPages{{id: 0, first: 0, pages: 786432}, {id: 1, first: 786432, pages: 262144}}

const (
	dirty = kvmapi.KVM_DIRTY_GFN_F_DIRTY
	reset = kvmapi.KVM_DIRTY_GFN_F_RESET
)

func TestCollectRingInOrderAndWraps(t *testing.T) {
	ring := make([]kvmapi.DirtyGFN, 8)
	// KVM published four entries from index 6: 6, 7, 0, 1 (wrapping).
	ring[6] = kvmapi.DirtyGFN{Flags: dirty, Slot: 0, Offset: 10}
	ring[7] = kvmapi.DirtyGFN{Flags: dirty, Slot: 1, Offset: 0}
	ring[0] = kvmapi.DirtyGFN{Flags: dirty, Slot: 1, Offset: 262143}
	ring[1] = kvmapi.DirtyGFN{Flags: dirty, Slot: 0, Offset: 10} // again: a set
	// Index 2 was reset by KVM earlier and is not published again.
	ring[2] = kvmapi.DirtyGFN{Flags: reset, Slot: 0, Offset: 99}
	fetch := uint32(6)
	dst := NewBitmap(1 << 20)
	n, err := collectRing(ring, &fetch, twoSlots, dst)
	if err != nil || n != 4 {
		t.Fatalf("collectRing = %d, %v; want 4 entries", n, err)
	}
	if fetch != 10 {
		t.Fatalf("fetch index %d after collecting 4 from 6; want 10 (it is taken modulo 8)", fetch)
	}
	want := []Run{{10, 1}, {786432, 1}, {786432 + 262143, 1}}
	if got := slices.Collect(dst.Runs()); !slices.Equal(got, want) {
		t.Fatalf("collected %v, want %v", got, want)
	}
	for _, i := range []int{6, 7, 0, 1} {
		if ring[i].Flags != reset {
			t.Errorf("entry %d flags %#x after collection, want RESET", i, ring[i].Flags)
		}
	}
	// Nothing new: a second collection takes nothing.
	if n, err := collectRing(ring, &fetch, twoSlots, dst); n != 0 || err != nil {
		t.Fatalf("second collectRing = %d, %v; want nothing", n, err)
	}
}

func TestCollectRingStopsAtUnpublishedEntry(t *testing.T) {
	ring := make([]kvmapi.DirtyGFN, 8)
	ring[0] = kvmapi.DirtyGFN{Flags: dirty, Offset: 1}
	// Entry 1 is being written by KVM: slot and offset are there, DIRTY is
	// not yet. Entry 2 must not be collected before it.
	ring[1] = kvmapi.DirtyGFN{Flags: 0, Offset: 2}
	ring[2] = kvmapi.DirtyGFN{Flags: dirty, Offset: 3}
	fetch := uint32(0)
	dst := NewBitmap(1 << 20)
	n, err := collectRing(ring, &fetch, twoSlots, dst)
	if err != nil || n != 1 || fetch != 1 {
		t.Fatalf("collectRing = %d, %v, fetch %d; want 1 entry, fetch 1", n, err, fetch)
	}
	if dst.Has(2) || dst.Has(3) || !dst.Has(1) {
		t.Fatalf("collected %v, want only page 1", slices.Collect(dst.Runs()))
	}
	if ring[1].Flags != 0 || ring[2].Flags != dirty {
		t.Fatalf("entries past the unpublished one were touched: %#x %#x", ring[1].Flags, ring[2].Flags)
	}
	// KVM publishes entry 1: collection resumes there.
	ring[1].Flags = dirty
	if n, err := collectRing(ring, &fetch, twoSlots, dst); n != 2 || err != nil || !dst.Has(2) || !dst.Has(3) {
		t.Fatalf("after publishing: collectRing = %d, %v; pages 2,3 = %v,%v", n, err, dst.Has(2), dst.Has(3))
	}
}

func TestCollectFullRingTerminates(t *testing.T) {
	ring := make([]kvmapi.DirtyGFN, 16)
	for i := range ring {
		ring[i] = kvmapi.DirtyGFN{Flags: dirty, Offset: uint64(100 + i)}
	}
	fetch := uint32(5)
	dst := NewBitmap(1 << 20)
	n, err := collectRing(ring, &fetch, twoSlots, dst)
	if err != nil || n != 16 || dst.Count() != 16 || fetch != 21 {
		t.Fatalf("full ring: collected %d (%d pages), fetch %d, %v; want 16, 16, 21", n, dst.Count(), fetch, err)
	}
}

func TestCollectRingRejectsPagesOutsideRAM(t *testing.T) {
	cases := []struct {
		e    kvmapi.DirtyGFN
		want string
	}{
		{kvmapi.DirtyGFN{Flags: dirty, Slot: 7, Offset: 1}, "unknown slot 7"},
		{kvmapi.DirtyGFN{Flags: dirty, Slot: 1, Offset: 262144}, "slot 1, which has 262144 pages"},
		{kvmapi.DirtyGFN{Flags: dirty, Slot: 1 << 16, Offset: 1}, "address space 1"},
	}
	for _, c := range cases {
		ring := []kvmapi.DirtyGFN{c.e, {Flags: dirty, Offset: 5}}
		fetch := uint32(0)
		dst := NewBitmap(1 << 20)
		n, err := collectRing(ring, &fetch, twoSlots, dst)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("entry %+v: err %v, want one saying %q", c.e, err, c.want)
		}
		// The bad entry is still handed back, and the good one still counts.
		if n != 2 || ring[0].Flags != reset || !dst.Has(5) || dst.Count() != 1 {
			t.Errorf("entry %+v: n=%d flags=%#x pages=%v", c.e, n, ring[0].Flags, slices.Collect(dst.Runs()))
		}
	}
}

func TestSlotsOfTwoSlotMemory(t *testing.T) {
	mem, err := vmm.NewGuestMemory(4 << 30)
	if err != nil {
		t.Fatalf("reserving a 4 GiB guest (lazily, nothing touched): %v", err)
	}
	defer mem.Close()
	got := slotsOf(mem)
	if !slices.Equal(got, twoSlots) {
		t.Fatalf("slotsOf(4 GiB) = %+v, want %+v", got, twoSlots)
	}
	// GPA 4 GiB + 5 pages is RAM page 3 GiB/4096 + 5.
	p, err := ramPage(got, 1, 5)
	if err != nil || p != (3<<30)/4096+5 {
		t.Fatalf("ramPage(slot 1, 5) = %d, %v", p, err)
	}
	// A device write above 4 GiB lands on the same RAM page index.
	if _, err := mem.WriteAt([]byte{1}, 4<<30+5*4096+100); err != nil {
		t.Fatal(err)
	}
	b := NewBitmap(mem.Pages())
	mem.TakeVMMDirty(b.Words())
	if want := [](Run){{p, 1}}; !slices.Equal(slices.Collect(b.Runs()), want) {
		t.Fatalf("VMM write at GPA 4 GiB+5 pages marked %v, want %v", slices.Collect(b.Runs()), want)
	}
}
