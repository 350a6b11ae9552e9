package vmm

import (
	"encoding/binary"
	"slices"
	"testing"
)

func TestPagingModeOf(t *testing.T) {
	for _, c := range []struct {
		cr0, cr4, efer uint64
		want           pagingMode
	}{
		{0, cr4PAE, eferLMA, pagingOff},
		{cr0PG, 0, 0, paging32},
		{cr0PG, cr4PAE, 0, pagingPAE},
		{cr0PG, cr4PAE, eferLMA, pagingLevel4},
		{cr0PG, cr4PAE | cr4LA57, eferLMA, pagingLevel5},
	} {
		if got := pagingModeOf(c.cr0, c.cr4, c.efer); got != c.want {
			t.Errorf("CR0 %#x CR4 %#x EFER %#x: mode %d, want %d", c.cr0, c.cr4, c.efer, got, c.want)
		}
	}
}

func TestPagingPages(t *testing.T) {
	mem, err := NewGuestMemory(MinMemory)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	put64 := func(table uint64, i int, v uint64) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		if _, err := mem.WriteAt(b[:], int64(table+uint64(i)*8)); err != nil {
			t.Fatal(err)
		}
	}
	const p, ps = ptePresent | 2, ptePresent | 2 | ptePageSz
	// 64-bit: a PML4 whose entries 0 and 5 share a PDPT, one entry points
	// past RAM and one to the PML4 itself (a recursive mapping); the PDPT
	// maps a 1 GiB page and a PD; the PD maps a 2 MiB page and two PTs.
	const pml4, pdpt, pd, pt1, pt2, pml5 = 0x10000, 0x11000, 0x12000, 0x15000, 0x16000, 0x1c000
	put64(pml4, 0, pdpt|p)
	put64(pml4, 5, pdpt|p)
	put64(pml4, 7, 0xffff_0000_0000|p)
	put64(pml4, 9, 0x13000) // not present
	put64(pml4, 510, pml4|p)
	put64(pdpt, 0, pd|p)
	put64(pdpt, 1, 0x40000000|ps)
	put64(pd, 0, 0x200000|ps)
	put64(pd, 1, pt1|p)
	put64(pd, 2, pt2|p)
	put64(pml5, 3, pml4|p)
	// PAE: the PDPT 32 bytes into its page, one PD with a 2 MiB page and a
	// PT. 32-bit: a PD with one PT.
	const paePDPT, paePD, paePT, pd32, pt32 = 0x17020, 0x18000, 0x19000, 0x1a000, 0x1b000
	put64(paePDPT, 2, paePD|ptePresent)
	put64(paePD, 0, 0x200000|ps)
	put64(paePD, 1, paePT|p)
	var e [4]byte
	binary.LittleEndian.PutUint32(e[:], pt32|p)
	mem.WriteAt(e[:], pd32+3*4)

	pages := func(gpas ...uint64) []uint64 {
		var out []uint64
		for _, g := range gpas {
			out = append(out, g/PageSize)
		}
		slices.Sort(out)
		return out
	}
	for _, c := range []struct {
		name string
		mode pagingMode
		cr3  uint64
		want []uint64
	}{
		{"off", pagingOff, pml4, nil},
		{"4-level", pagingLevel4, pml4 | 0x18, pages(pml4, pdpt, pd, pt1, pt2)},
		{"5-level", pagingLevel5, pml5, pages(pml5, pml4, pdpt, pd, pt1, pt2)},
		{"PAE", pagingPAE, paePDPT, pages(paePDPT&^0xfff, paePD, paePT)},
		{"32-bit", paging32, pd32, pages(pd32, pt32)},
	} {
		got, err := pagingPages(c.mode, c.cr3, mem)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: %#x, %v; want %#x", c.name, got, err, c.want)
		}
	}
}
