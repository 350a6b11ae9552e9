package vmm

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/bobuhiro11/gokvm/kvm"
)

// PagingPages returns, in increasing order, the RAM page numbers of the
// paging structures the vCPU's CR3 reaches: every table a page walk may read
// (PML5, PML4, PDPT, PD and PT pages in 64-bit mode; the PDPT, PD and PT
// pages of PAE and 32-bit paging), none if paging is off.
//
// Hardware writes these pages by itself: a walk sets accessed and dirty
// bits (Intel allows it speculatively), and under QEMU's TCG emulating
// AMD-V every walk through nested paging is a write to the table's page, so
// KVM's dirty log reports the tables at every TLB refill, that is after
// every VM entry, whatever the guest executed. Whether they are dirty says
// how often the guest was entered, not what it did; a landing signature
// (modes/replay) leaves them out.
//
// It reads the tables (not the PT pages) from guest memory. The guest is
// not running between Stepper calls, so they are stable.
func (s *Stepper) PagingPages() ([]uint64, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	var sregs *kvm.Sregs
	err := s.v.do(func() (err error) {
		if sregs, err = kvm.GetSregs(uintptr(s.v.fd)); err != nil {
			return fmt.Errorf("KVM_GET_SREGS: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pagingPages(pagingModeOf(sregs.CR0, sregs.CR4, sregs.EFER), sregs.CR3, s.m.mem)
}

// pagingMode is how the vCPU translates linear addresses.
type pagingMode uint8

const (
	pagingOff    pagingMode = iota
	paging32                // 32-bit: PD, PT; 4-byte entries
	pagingPAE               // PAE: a 32-byte PDPT, PD, PT
	pagingLevel4            // 64-bit: PML4, PDPT, PD, PT
	pagingLevel5            // 64-bit with LA57: PML5 above those
)

// cr4LA57 is CR4's 5-level paging bit.
const cr4LA57 = 1 << 12

func pagingModeOf(cr0, cr4, efer uint64) pagingMode {
	switch {
	case cr0&cr0PG == 0:
		return pagingOff
	case efer&eferLMA != 0 && cr4&cr4LA57 != 0:
		return pagingLevel5
	case efer&eferLMA != 0:
		return pagingLevel4
	case cr4&cr4PAE != 0:
		return pagingPAE
	}
	return paging32
}

// Paging-entry bits.
const (
	ptePresent = 1 << 0
	ptePageSz  = 1 << 7 // PS: the entry maps a large page
	// pteAddr is the table address in a 64-bit entry (bits 12-51).
	pteAddr = 0x000f_ffff_ffff_f000
)

// pagingPages walks the tables of mode from cr3 in mem and returns the page
// numbers of every table page, sorted, without duplicates. Entries that
// point outside RAM are not followed.
func pagingPages(mode pagingMode, cr3 uint64, mem *GuestMemory) ([]uint64, error) {
	var pages []uint64
	var table [PageSize]byte
	inRAM := func(gpa uint64) bool { _, err := mem.offset(gpa, PageSize); return err == nil }
	// seen keeps a table shared by several entries (or mapping itself, as
	// a recursive PML4 entry does) from being walked again at its level.
	type visit struct {
		gpa   uint64
		level int
	}
	seen := map[visit]bool{}
	// walk records the table at gpa, of level (4 PML4 ... 1 PT), and the
	// tables its present entries point to; psAllowed says whether its
	// entries may map large pages instead.
	var walk func(gpa uint64, level int, psAllowed bool) error
	walk = func(gpa uint64, level int, psAllowed bool) error {
		gpa &^= PageSize - 1
		if !inRAM(gpa) || seen[visit{gpa, level}] {
			return nil
		}
		seen[visit{gpa, level}] = true
		pages = append(pages, gpa/PageSize)
		if level == 1 {
			return nil // a PT: its entries map pages, not tables
		}
		if _, err := mem.ReadAt(table[:], int64(gpa)); err != nil {
			return err
		}
		var next []uint64
		for i := 0; i < PageSize; i += 8 {
			e := binary.LittleEndian.Uint64(table[i:])
			if e&ptePresent == 0 || psAllowed && e&ptePageSz != 0 {
				continue
			}
			next = append(next, e&pteAddr)
		}
		for _, n := range next {
			// 1 GiB pages at the PDPT (level 3), 2 MiB ones at the PD.
			if err := walk(n, level-1, level-1 == 3 || level-1 == 2); err != nil {
				return err
			}
		}
		return nil
	}
	var err error
	switch mode {
	case pagingOff:
		return nil, nil
	case pagingLevel5:
		err = walk(cr3&pteAddr, 5, false)
	case pagingLevel4:
		err = walk(cr3&pteAddr, 4, false)
	case pagingPAE:
		// CR3 holds the 32-byte-aligned PDPT: four entries, no large pages.
		pdpt := cr3 & 0xffff_ffe0
		var e [32]byte
		if _, err := mem.ReadAt(e[:], int64(pdpt)); err != nil {
			return nil, err
		}
		pages = append(pages, pdpt/PageSize)
		for i := 0; i < 4 && err == nil; i++ {
			if pdpte := binary.LittleEndian.Uint64(e[i*8:]); pdpte&ptePresent != 0 {
				err = walk(pdpte&pteAddr, 2, true)
			}
		}
	case paging32:
		err = walk32(cr3&0xffff_f000, mem, inRAM, &pages)
	}
	if err != nil {
		return nil, err
	}
	slices.Sort(pages)
	return slices.Compact(pages), nil
}

// walk32 is pagingPages for 32-bit paging: a PD of 1024 four-byte entries,
// whose present entries without PS point to PTs. (PS means a 4 MiB page
// only with CR4.PSE; without it the bit is ignored and the entry points to
// a PT. Counting such a PT as a table either way errs towards leaving a
// page out of a signature, never towards a spurious difference.)
func walk32(pd uint64, mem *GuestMemory, inRAM func(uint64) bool, pages *[]uint64) error {
	if !inRAM(pd) {
		return nil
	}
	*pages = append(*pages, pd/PageSize)
	var table [PageSize]byte
	if _, err := mem.ReadAt(table[:], int64(pd)); err != nil {
		return err
	}
	for i := 0; i < PageSize; i += 4 {
		e := uint64(binary.LittleEndian.Uint32(table[i:]))
		if e&ptePresent == 0 {
			continue
		}
		if pt := e & 0xffff_f000; inRAM(pt) {
			*pages = append(*pages, pt/PageSize)
		}
	}
	return nil
}
