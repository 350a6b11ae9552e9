package dirtylog

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// newMemtouch is the harness tests and benchmarks share: a machine loaded
// with the memtouch guest and a tracker for mode, closed at the end.
func newMemtouch(t testing.TB, mode Mode, vcpus int, memSize int64, params map[string]string) (*vmm.Machine, Tracker, *vmmtest.Console) {
	t.Helper()
	vmmtest.RequireKVM(t)
	img, err := guests.Image("memtouch")
	if err != nil {
		t.Fatal(err)
	}
	host, err := ProbeHost()
	if err != nil {
		t.Fatal(err)
	}
	entries, err := RingEntriesFor(mode, memSize, host)
	if err != nil {
		t.Skipf("%v", err)
	}
	if mode == ModeRing {
		// Small rings, so that busy epochs fill them and the ring-full path
		// runs. 1024 entries exceed KVM's reserve (64 + the PML buffer).
		entries = 1024
	}
	con := &vmmtest.Console{}
	m, err := vmm.New(vmm.Config{VCPUs: vcpus, MemSize: memSize, IRQChip: true, DirtyRingEntries: entries, Params: params, Console: con})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.LoadBareMetal(img, nil); err != nil {
		t.Fatal(err)
	}
	tr, err := New(m, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return m, tr, con
}

var startLine = regexp.MustCompile(`memtouch: start ws=(\d+) .* base=0x([0-9a-f]+)`)

// passStamps reads the first word of each working-set page: memtouch writes
// the pass number there, so a page's stamp changes exactly when it is
// written.
func passStamps(m *vmm.Machine, first, n uint64) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(m.Memory().Page(first + uint64(i)))
	}
	return out
}

func TestHarvestIsExact(t *testing.T) {
	for _, mode := range []Mode{ModeBitmap, ModeRing} {
		for _, vcpus := range []int{1, 4} {
			t.Run(fmt.Sprintf("%v/vcpus=%d", mode, vcpus), func(t *testing.T) { testHarvestIsExact(t, mode, vcpus) })
		}
	}
}

func testHarvestIsExact(t *testing.T, mode Mode, vcpus int) {
	const ws = 2048
	m, tr, con := newMemtouch(t, mode, vcpus, 32<<20, map[string]string{
		"ws": strconv.Itoa(ws), "dirty": "37", "mode": "small", "every": "1000000"})
	pages := m.Memory().Pages()
	dst := NewBitmap(pages)
	// The loader's writes are the first harvest.
	if _, err := tr.Harvest(dst); err != nil {
		t.Fatal(err)
	}
	if dst.Count() == 0 {
		t.Fatal("the first harvest misses the loader's writes")
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	s := con.WaitFor(t, m, startLine)
	gotWS, _ := strconv.ParseUint(s[1], 10, 64)
	base, _ := strconv.ParseUint(s[2], 16, 64)
	if gotWS != ws || base%vmm.PageSize != 0 || base+ws*vmm.PageSize > 3<<30 {
		t.Fatalf("memtouch started with ws=%d base=%#x", gotWS, base)
	}
	first := base / vmm.PageSize // below 3 GiB, GPA = RAM offset
	devPage := first + ws + 10   // the guest never touches it
	devEpoch := -1
	// Epoch 0 ends here: its harvest is not checked, the stamps read while
	// paused are the baseline.
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Harvest(dst); err != nil {
		t.Fatal(err)
	}
	prev := passStamps(m, first, ws)
	written, maxEpoch := 0, 0
	for e := 1; e <= 200 && (written < 4*ws || e <= 4); e++ {
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // lets the guest run; decides nothing
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
		dst.Clear()
		if _, err := tr.Harvest(dst); err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		cur := passStamps(m, first, ws)
		n := 0
		for i := uint64(0); i < ws; i++ {
			changed := cur[i] != prev[i]
			if changed {
				n++
			}
			if changed && !dst.Has(first+i) {
				t.Fatalf("epoch %d: working-set page %d was written (pass %d → %d) and not harvested", e, i, prev[i], cur[i])
			}
			if !changed && dst.Has(first+i) {
				t.Fatalf("epoch %d: working-set page %d was not written and was harvested", e, i)
			}
		}
		written += n
		maxEpoch = max(maxEpoch, n)
		// A device write while paused is in the next harvest and not the one
		// after.
		switch {
		case devEpoch == e-1 && !dst.Has(devPage):
			t.Fatalf("epoch %d: the device write made before it was not harvested", e)
		case devEpoch == e-2 && dst.Has(devPage):
			t.Fatalf("epoch %d: the device write of epoch %d was harvested again", e, e-2)
		case devEpoch < 0 && dst.Has(devPage):
			t.Fatalf("epoch %d: page %d harvested before anything wrote it", e, devPage)
		}
		if e == 2 {
			if _, err := m.Memory().WriteAt([]byte("device"), int64(devPage*vmm.PageSize+100)); err != nil {
				t.Fatal(err)
			}
			devEpoch = e
		}
		t.Logf("epoch %d: %d working-set pages written, %d pages harvested", e, n, dst.Count())
		prev = cur
	}
	if written == 0 {
		t.Fatal("the guest wrote nothing in 200 epochs")
	}
	if rt, ok := tr.(*ringTracker); ok && maxEpoch >= 1024 {
		rt.mu.Lock()
		fulls := rt.fulls
		rt.mu.Unlock()
		if fulls == 0 {
			t.Fatalf("an epoch wrote %d pages into a 1024-entry ring and no ring-full exit was collected", maxEpoch)
		}
	}
}

// TestTrackerRefusesTheWrongMachine: a ring tracker needs a machine built
// with rings, a bitmap tracker one without.
func TestTrackerRefusesTheWrongMachine(t *testing.T) {
	vmmtest.RequireKVM(t)
	m, err := vmm.New(vmm.Config{VCPUs: 1, MemSize: 32 << 20, IRQChip: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := New(m, ModeRing); err == nil {
		t.Fatal("a ring tracker was made on a machine without rings")
	}
}

func BenchmarkKVMHarvest(b *testing.B) {
	for _, mode := range []Mode{ModeBitmap, ModeRing} {
		for _, mem := range []int64{256 << 20, 4 << 30, 64 << 30} {
			for _, dirty := range []int{10, 1000, 100000} {
				if uint64(dirty) >= uint64(mem)/vmm.PageSize/2 {
					continue
				}
				b.Run(fmt.Sprintf("%v/mem=%dMiB/dirty=%d", mode, mem>>20, dirty), func(b *testing.B) {
					benchKVMHarvest(b, mode, mem, dirty)
				})
			}
		}
	}
}

// benchKVMHarvest times Harvest after the guest dirtied `dirty` pages: each
// iteration lets the guest run (it rewrites its `dirty` pages flat out),
// pauses and harvests; only the harvest is timed.
func benchKVMHarvest(b *testing.B, mode Mode, mem int64, dirty int) {
	m, tr, con := newMemtouch(b, mode, 1, mem, map[string]string{
		"ws": strconv.Itoa(dirty), "dirty": strconv.Itoa(dirty), "mode": "small", "every": "1000000"})
	dst := NewBitmap(m.Memory().Pages())
	if err := m.Start(); err != nil {
		b.Fatal(err)
	}
	con.WaitFor(b, m, startLine)
	total := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if i > 0 {
			if err := m.Resume(); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(2 * time.Millisecond)
		if err := m.Pause(); err != nil {
			b.Fatal(err)
		}
		dst.Clear()
		b.StartTimer()
		if _, err := tr.Harvest(dst); err != nil {
			b.Fatal(err)
		}
		total += dst.Count()
	}
	b.ReportMetric(float64(total)/float64(b.N), "pages/harvest")
}
