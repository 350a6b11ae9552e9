package dirtylog

import (
	"slices"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"

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
	dst := machine.NewBitmap(1 << 20)
	n, err := collectRing(ring, &fetch, twoSlots, dst)
	if err != nil || n != 4 {
		t.Fatalf("collectRing = %d, %v; want 4 entries", n, err)
	}
	if fetch != 10 {
		t.Fatalf("fetch index %d after collecting 4 from 6; want 10 (it is taken modulo 8)", fetch)
	}
	want := []machine.Run{{First: 10, Count: 1}, {First: 786432, Count: 1}, {First: 786432 + 262143, Count: 1}}
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
	dst := machine.NewBitmap(1 << 20)
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
	dst := machine.NewBitmap(1 << 20)
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
		dst := machine.NewBitmap(1 << 20)
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
	b := machine.NewBitmap(mem.Pages())
	mem.TakeVMMDirty(b.Words())
	if want := []machine.Run{{First: p, Count: 1}}; !slices.Equal(slices.Collect(b.Runs()), want) {
		t.Fatalf("VMM write at GPA 4 GiB+5 pages marked %v, want %v", slices.Collect(b.Runs()), want)
	}
}

// kvmRing plays KVM's side of one vCPU's dirty ring (virt/kvm/dirty_ring.c):
// push publishes an entry at the write index whether or not the one there was
// collected (as KVM does once it logs past the ring's size), and reset walks
// from the reset index over entries marked RESET, clearing them.
type kvmRing struct {
	r           *vcpuRing
	write, done uint32 // dirty_index and reset_index
	next        uint64 // the page the next push names
}

func newKVMRing(size int) *kvmRing {
	return &kvmRing{r: &vcpuRing{ring: make([]kvmapi.DirtyGFN, size)}}
}

// push logs n pages and returns the first.
func (k *kvmRing) push(n int) uint64 {
	first := k.next
	for ; n > 0; n-- {
		e := &k.r.ring[k.write%uint32(len(k.r.ring))]
		*e = kvmapi.DirtyGFN{Flags: dirty, Offset: k.next}
		k.write++
		k.next++
	}
	return first
}

func (k *kvmRing) reset() { k.resetSome(-1) }

// resetSome is reset stopped early, as a pending signal stops it, after n
// entries (n < 0: none).
func (k *kvmRing) resetSome(n int) {
	for ; n != 0; n-- {
		e := &k.r.ring[k.done%uint32(len(k.r.ring))]
		if e.Flags&reset == 0 {
			return
		}
		e.Flags = 0
		k.done++
	}
}

// collect is a harvest: collectStopped, then KVM's reset.
func (k *kvmRing) collect(t *testing.T) (pages []machine.Run, lost bool) {
	t.Helper()
	dst := machine.NewBitmap(1 << 20)
	n, lost, err := collectStopped(k.r, twoSlots, dst)
	if err != nil {
		t.Fatalf("collectStopped: %v", err)
	}
	if n != dst.Count() && !lost {
		t.Fatalf("collectStopped took %d entries for %d pages", n, dst.Count())
	}
	k.reset()
	return slices.Collect(dst.Runs()), lost
}

func TestCollectStoppedInStep(t *testing.T) {
	k := newKVMRing(16)
	for _, n := range []int{5, 15, 0, 16 - 1} {
		first := k.push(n)
		got, lost := k.collect(t)
		var want []machine.Run
		if n > 0 {
			want = []machine.Run{{First: first, Count: uint64(n)}}
		}
		if lost || !slices.Equal(got, want) {
			t.Fatalf("%d entries pushed: collected %v (lost %v), want %v", n, got, lost, want)
		}
		if k.write != k.done || k.r.outOfStep {
			t.Fatalf("%d entries pushed: KVM counts %d not harvested, out of step %v", n, k.write-k.done, k.r.outOfStep)
		}
	}
}

// TestResetDoneFollowsKVMsReset: a reset that stopped early (a signal was
// pending) leaves entries marked, and resetDone says so until KVM reset the
// last one marked, in step and after an overflow.
func TestResetDoneFollowsKVMsReset(t *testing.T) {
	k := newKVMRing(16)
	if !k.r.resetDone() {
		t.Fatal("a ring with nothing collected waits for a reset")
	}
	for _, c := range []struct {
		name  string
		push  int
		stops []int // each reset's entries before it stops early
	}{
		{"in step", 10, []int{0, 4, 5}},
		{"wrapping", 12, []int{11}},
		{"overflow", 16 + 3, []int{1, 14}},
	} {
		k.push(c.push)
		k.collect(t) // KVM's reset there is complete: take it back
		if !k.r.resetDone() {
			t.Fatalf("%s: a complete reset is not done", c.name)
		}
		k.push(c.push)
		dst := machine.NewBitmap(1 << 20)
		if _, _, err := collectStopped(k.r, twoSlots, dst); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.stops {
			k.resetSome(n)
			if k.r.resetDone() {
				t.Fatalf("%s: done after a reset stopped %d entries in (KVM counts %d not harvested)", c.name, n, k.write-k.done)
			}
		}
		k.reset()
		if !k.r.resetDone() {
			t.Fatalf("%s: not done after the reset completed", c.name)
		}
	}
}

// TestRingOverflowIsLostAndResyncs: KVM logs V entries past the ring's
// size, over entries not collected. The harvest says pages were lost; KVM
// then counts V cleared entries as not harvested and logs after them, and
// the next harvests find the new entries and bring KVM's reset index level
// with its write index.
func TestRingOverflowIsLostAndResyncs(t *testing.T) {
	for _, over := range []int{0, 1, 5, 15} {
		// KVM stops the vCPU before the over cleared entries and the new
		// ones fill the ring (unless it overflows again, below).
		for _, after := range []int{1, max(1, 16-1-over)} {
			k := newKVMRing(16)
			k.push(3)
			k.collect(t)
			k.push(16 + over)
			if _, lost := k.collect(t); !lost {
				t.Fatalf("overflow by %d: the harvest of a ring written whole is not lost", over)
			}
			if got := k.write - k.done; got != uint32(over) {
				t.Fatalf("overflow by %d: KVM counts %d entries not harvested", over, got)
			}
			// Nothing logged yet: nothing to take, nothing lost.
			if got, lost := k.collect(t); got != nil || lost {
				t.Fatalf("overflow by %d, nothing new: collected %v (lost %v)", over, got, lost)
			}
			for _, n := range []int{after, 16 - 1} {
				first := k.push(n)
				got, lost := k.collect(t)
				if want := []machine.Run{{First: first, Count: uint64(n)}}; lost || !slices.Equal(got, want) {
					t.Fatalf("overflow by %d, then %d entries: collected %v (lost %v), want %v", over, n, got, lost, want)
				}
				if k.write != k.done || k.r.outOfStep {
					t.Fatalf("overflow by %d, then %d entries: KVM counts %d not harvested, out of step %v", over, n, k.write-k.done, k.r.outOfStep)
				}
			}
		}
	}
}

func TestRingOverflowAgainWhileOutOfStep(t *testing.T) {
	k := newKVMRing(16)
	k.push(16 + 4)
	k.collect(t)
	// Four cleared entries count as not harvested; KVM writes 16 more,
	// the last four over them: every entry is published again.
	k.push(16)
	if _, lost := k.collect(t); !lost {
		t.Fatal("a second overflow is not lost")
	}
	// KVM writes 13 entries after 4 cleared ones: the last over the first
	// cleared one. Nothing is lost; KVM resets the ring's 16 and still counts
	// one entry, the next harvest finds it, and then the ring is in step.
	k = newKVMRing(16)
	k.push(16 + 4)
	k.collect(t)
	first := k.push(13)
	if got, lost := k.collect(t); lost || !slices.Equal(got, []machine.Run{{First: first, Count: 13}}) {
		t.Fatalf("13 entries over the cleared ones: collected %v (lost %v)", got, lost)
	}
	if got := k.write - k.done; got != 1 || !k.r.outOfStep {
		t.Fatalf("13 entries over the cleared ones: KVM counts %d not harvested (out of step %v), want 1", got, k.r.outOfStep)
	}
	first = k.push(15)
	if got, lost := k.collect(t); lost || !slices.Equal(got, []machine.Run{{First: first, Count: 15}}) || k.write != k.done || k.r.outOfStep {
		t.Fatalf("then 15 entries: collected %v (lost %v), KVM counts %d, out of step %v", got, lost, k.write-k.done, k.r.outOfStep)
	}
}

// TestRingOverflowPastTwiceItsSize: KVM logs so far past the ring's size
// that, once the harvest took the whole ring, it still counts its soft
// limit or more of cleared entries as not harvested and stops the vCPU
// with a ring-full exit with nothing published (seen on kvm-pvm with 100000
// pages dirtied in an epoch). The exits hand entries back until KVM can run
// the vCPU, never past KVM's write index, and the ring then collects what
// KVM logs and comes back in step. Both soft limits: AMD's (no PML buffer)
// and Intel's.
func TestRingOverflowPastTwiceItsSize(t *testing.T) {
	const size = 1024
	for _, soft := range []uint32{size - 64, size - ringReserve} {
		for _, over := range []int{int(soft), size, size + 300, 3*size + 5} {
			k := newKVMRing(size)
			k.push(3)
			k.collect(t)
			k.push(size + over)
			if _, lost := k.collect(t); !lost {
				t.Fatalf("soft %d, overflow by %d: the harvest is not lost", soft, over)
			}
			exits := 0
			for k.write-k.done >= soft {
				if exits++; exits > 10 {
					t.Fatalf("soft %d, overflow by %d: still full after %d ring-full exits (KVM counts %d)", soft, over, exits-1, k.write-k.done)
				}
				n, _, drained, err := collectFull(k.r, twoSlots, machine.NewBitmap(1<<20))
				if err != nil || n != 0 || !drained {
					t.Fatalf("soft %d, overflow by %d: ring-full exit %d with nothing published: took %d, drained %v, %v", soft, over, exits, n, drained, err)
				}
				k.reset()
				if int32(k.write-k.done) < 0 {
					t.Fatalf("soft %d, overflow by %d: KVM's reset walked %d entries past its write index", soft, over, k.done-k.write)
				}
			}
			for round := 0; k.r.outOfStep || round < 2; round++ {
				if round > 3 {
					t.Fatalf("soft %d, overflow by %d: still out of step after %d harvests", soft, over, round)
				}
				n := int(soft-(k.write-k.done)) - 1
				first := k.push(n)
				got, lost := k.collect(t)
				if want := []machine.Run{{First: first, Count: uint64(n)}}; lost || !slices.Equal(got, want) {
					t.Fatalf("soft %d, overflow by %d, harvest %d: collected %v (lost %v), want %v", soft, over, round, got, lost, want)
				}
			}
			if k.write != k.done {
				t.Fatalf("soft %d, overflow by %d: in step, and KVM counts %d entries not harvested", soft, over, k.write-k.done)
			}
		}
	}
}

// TestMarkPublishedCountsWithoutCollecting: DirtySoFar's reading of a ring
// counts the pages of the published entries, each once, leaves the entries
// to the next harvest (which takes the same pages), and after an overflow
// finds the entries wherever KVM wrote them.
func TestMarkPublishedCountsWithoutCollecting(t *testing.T) {
	count := &distinctPages{seen: machine.NewBitmap(1 << 20)}
	k := newKVMRing(16)
	k.push(3)
	k.collect(t)
	first := k.push(5)
	k.r.ring[k.write%16] = kvmapi.DirtyGFN{Flags: dirty, Offset: first} // logged again
	k.write++
	markPublished(k.r, twoSlots, count)
	if n := count.reset(); n != 5 {
		t.Fatalf("6 entries of 5 pages published: counted %d", n)
	}
	if n := count.seen.Count(); n != 0 {
		t.Fatalf("%d pages still marked after reset", n)
	}
	dst := machine.NewBitmap(1 << 20)
	if n, lost, err := collectStopped(k.r, twoSlots, dst); n != 6 || lost || err != nil {
		t.Fatalf("after the count the harvest took %d entries (lost %v, %v), want the 6", n, lost, err)
	}
	k.reset()
	if got := slices.Collect(dst.Runs()); !slices.Equal(got, []machine.Run{{First: first, Count: 5}}) {
		t.Fatalf("after the count the harvest collected %v, want the 5 pages from %d", got, first)
	}
	markPublished(k.r, twoSlots, count)
	if n := count.reset(); n != 0 {
		t.Fatalf("nothing published since the harvest: counted %d", n)
	}

	k.push(16 + 4) // over the ring's size: out of step after the harvest
	if _, lost := k.collect(t); !lost || !k.r.outOfStep {
		t.Fatal("the overflow was not seen")
	}
	first = k.push(2) // written after the 4 entries KVM still counts
	markPublished(k.r, twoSlots, count)
	if n := count.reset(); n != 2 {
		t.Fatalf("2 entries published in a ring out of step: counted %d", n)
	}
	if got, _ := k.collect(t); !slices.Equal(got, []machine.Run{{First: first, Count: 2}}) {
		t.Fatalf("after the count the harvest collected %v, want the 2 pages from %d", got, first)
	}
}
