package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ftckpt/ftckpt/vmm/cow"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

func TestGuestMemorySlotsAroundTheHole(t *testing.T) {
	for _, tc := range []struct {
		size  int64
		slots []Slot
	}{
		{16 << 20, []Slot{{ID: 0, GPA: 0, Size: 16 << 20}}},
		{LowRAMTop, []Slot{{ID: 0, GPA: 0, Size: LowRAMTop}}},
		{64 << 30, []Slot{{ID: 0, GPA: 0, Size: LowRAMTop}, {ID: 1, GPA: HighRAMGPA, Size: 64<<30 - LowRAMTop, HostOffset: LowRAMTop}}},
	} {
		m, err := NewGuestMemory(tc.size)
		if err != nil {
			t.Fatalf("size %d: %v", tc.size, err)
		}
		got := m.Slots()
		if len(got) != len(tc.slots) {
			t.Fatalf("size %d: slots %+v, want %+v", tc.size, got, tc.slots)
		}
		for i := range got {
			if got[i] != tc.slots[i] {
				t.Errorf("size %d: slot %d = %+v, want %+v", tc.size, i, got[i], tc.slots[i])
			}
		}
		m.Close()
	}
}

func TestGuestMemoryRejectsBadSizes(t *testing.T) {
	for _, size := range []int64{0, 1 << 20, MinMemory - 2<<20, MaxMemory + 2<<20, 17<<20 + 4096} {
		if _, err := NewGuestMemory(size); err == nil {
			t.Errorf("size %d accepted", size)
		}
	}
}

func TestWriteAtMarksDirtyAndTranslatesHighMemory(t *testing.T) {
	m, err := NewGuestMemory(4 << 30)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// A write straddling two pages below the hole, one above it.
	if _, err := m.WriteAt([]byte("hello"), 3*PageSize-2); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte{1}, HighRAMGPA+5*PageSize); err != nil {
		t.Fatal(err)
	}
	if got := m.Bytes()[LowRAMTop+5*PageSize]; got != 1 {
		t.Errorf("high write landed elsewhere: byte = %d", got)
	}
	bm := make([]uint64, (m.Pages()+63)/64)
	if n := m.TakeVMMDirty(bm); n != 3 {
		t.Errorf("dirty pages = %d, want 3", n)
	}
	for _, p := range []uint64{2, 3, LowRAMTop/PageSize + 5} {
		if bm[p/64]&(1<<(p%64)) == 0 {
			t.Errorf("page %d not marked dirty", p)
		}
	}
	clear(bm)
	if n := m.TakeVMMDirty(bm); n != 0 {
		t.Errorf("dirty bits not cleared: %d left", n)
	}
	for _, gpa := range []int64{LowRAMTop, HighRAMGPA - 1, -1, HighRAMGPA + (4<<30 - LowRAMTop)} {
		if _, err := m.WriteAt([]byte{1}, gpa); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write at %#x: %v, want ErrOutOfRange", gpa, err)
		}
	}
	if _, err := m.WriteAt(make([]byte, 2), LowRAMTop-1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write across the hole: %v, want ErrOutOfRange", err)
	}
}

// TestResidentSeesOnlyTouchedPages: an untouched 64 GiB guest costs a
// snapshot nothing. Where transparent huge pages apply (THP "always", as on
// Debian, or madvise as here) the first write makes a whole huge page
// resident; those extra pages read as zero and the snapshot skips them too.
func TestResidentSeesOnlyTouchedPages(t *testing.T) {
	hugePages := 1
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > PageSize {
			hugePages = n / PageSize
		}
	}
	for _, thp := range []bool{false, true} {
		t.Run(fmt.Sprintf("thp=%v", thp), func(t *testing.T) {
			m, err := NewGuestMemory(64 << 30)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			advice := unix.MADV_NOHUGEPAGE
			if thp {
				advice = unix.MADV_HUGEPAGE
			}
			if err := unix.Madvise(m.host, advice); err != nil {
				t.Logf("madvise: %v (the host's THP setting decides)", err)
			}
			m.WritePage(1000, bytes.Repeat([]byte{1}, PageSize))
			res, err := m.Resident()
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, r := range res {
				n += int(r & 1)
			}
			t.Logf("%d pages resident after one write", n)
			if res[1000]&1 == 0 || n > hugePages+16 {
				t.Errorf("resident: page 1000 = %d, %d pages in all, want it and at most one huge page (%d pages)", res[1000]&1, n, hugePages)
			}
		})
	}
}

// TestGuestMemoryIsMappedForHugePages: guest memory starts on a huge page
// boundary of the host, is advised to use huge pages where the host has
// them, and is one mapping of exactly its size (the slack mapped to align
// it is gone), which Close unmaps.
func TestGuestMemoryIsMappedForHugePages(t *testing.T) {
	for _, size := range []int64{16 << 20, 66 << 20} {
		m, err := NewGuestMemory(size)
		if err != nil {
			t.Fatal(err)
		}
		addr := uintptrOf(m.host)
		if addr%cow.HugePageSize != 0 {
			t.Errorf("%d MiB: guest memory at %#x, not on a %d MiB boundary", size>>20, addr, cow.HugePageSize>>20)
		}
		vma, ok := vmmtest.MappingAt(t, addr)
		if !ok || vma.Start != addr || vma.End != addr+uintptr(size) {
			t.Errorf("%d MiB at %#x: the mapping there is [%#x, %#x) (found: %v), want exactly the guest's memory", size>>20, addr, vma.Start, vma.End, ok)
		}
		if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage"); err == nil && !slices.Contains(vma.Flags, "hg") {
			t.Errorf("%d MiB: guest memory not advised to use huge pages: VmFlags %v", size>>20, vma.Flags)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if vma, ok := vmmtest.MappingAt(t, addr); ok {
			t.Errorf("%d MiB: after Close, %#x is still mapped: [%#x, %#x)", size>>20, addr, vma.Start, vma.End)
		}
	}
}

// TestNewFailsCleanly builds a machine: where /dev/kvm is absent it must
// fail with an error naming it, releasing what it had made, not panic.
func TestNewFailsCleanly(t *testing.T) {
	m, err := New(Config{VCPUs: 1, MemSize: 16 << 20, IRQChip: true})
	if err == nil {
		m.Close()
		return
	}
	if !strings.Contains(err.Error(), "/dev/kvm") {
		t.Errorf("New without KVM: %v", err)
	}
}
