package vmm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// Page-table and segment bits used to enter 64-bit mode.
const (
	pteP   = 1 << 0 // present
	pteRW  = 1 << 1 // writable
	ptePWT = 1 << 3 // write-through
	ptePCD = 1 << 4 // cache disabled
	ptePS  = 1 << 7 // 2 MiB page (in a PD entry)

	cr0PE = 1 << 0
	cr0MP = 1 << 1
	cr0ET = 1 << 4
	cr0NE = 1 << 5
	cr0WP = 1 << 16
	cr0PG = 1 << 31

	cr4PAE        = 1 << 5
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10

	eferLME = 1 << 8
	eferLMA = 1 << 10

	selCode = 0x08
	selData = 0x10
)

// gdtEntries are the VMM's GDT: null, 64-bit code (0x08), data (0x10).
var gdtEntries = []uint64{
	0,
	0x00AF9A000000FFFF, // code: present, DPL 0, execute/read, L=1, G=1
	0x00CF92000000FFFF, // data: present, DPL 0, read/write, D/B=1, G=1
}

// identityMapTop is the end of the guest-physical range the bare-metal page
// tables map: all RAM, and at least the 32-bit MMIO hole (LAPIC, IOAPIC).
func identityMapTop(memSize int64) uint64 {
	top := uint64(HighRAMGPA)
	if memSize > LowRAMTop {
		top = HighRAMGPA + uint64(memSize) - LowRAMTop
	}
	return (top + 1<<30 - 1) &^ (1<<30 - 1)
}

// buildPageTables returns the PML4, the PDPT and the PDs, laid out from
// PML4GPA: one PML4 page, one PDPT page, then one PD page per GiB mapped.
// Everything is identity-mapped with 2 MiB pages; the MMIO hole below 4 GiB
// is mapped uncached.
func buildPageTables(memSize int64) []byte {
	gibs := identityMapTop(memSize) >> 30
	buf := make([]byte, (2+gibs)*PageSize)
	pdptGPA := uint64(PML4GPA + PageSize)
	binary.LittleEndian.PutUint64(buf[0:], pdptGPA|pteP|pteRW)
	for g := uint64(0); g < gibs; g++ {
		pdGPA := uint64(PML4GPA) + (2+g)*PageSize
		binary.LittleEndian.PutUint64(buf[PageSize+g*8:], pdGPA|pteP|pteRW)
		pd := buf[(2+g)*PageSize:]
		for e := uint64(0); e < 512; e++ {
			addr := g<<30 | e<<21
			flags := uint64(pteP | pteRW | ptePS)
			if addr >= LowRAMTop && addr < HighRAMGPA {
				flags |= ptePCD | ptePWT
			}
			binary.LittleEndian.PutUint64(pd[e*8:], addr|flags)
		}
	}
	return buf
}

// pageTablesEnd is the first GPA after the page tables.
func pageTablesEnd(memSize int64) uint64 {
	return PML4GPA + (2+identityMapTop(memSize)>>30)*PageSize
}

// loadELF copies the PT_LOAD segments of a bare-metal guest image into guest
// memory and returns its entry point. Every segment must lie inside
// [ImageGPA, ImageGPA+ImageMax).
func loadELF(mem *GuestMemory, image []byte) (uint64, error) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return 0, fmt.Errorf("guest image: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return 0, fmt.Errorf("guest image: %v %v, want a 64-bit x86-64 ELF", f.Class, f.Machine)
	}
	loaded := false
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD {
			continue
		}
		if p.Paddr < ImageGPA || p.Memsz > ImageMax || p.Paddr-ImageGPA > ImageMax-p.Memsz || p.Filesz > p.Memsz {
			return 0, fmt.Errorf("guest image: segment [%#x, +%#x) outside [%#x, %#x)", p.Paddr, p.Memsz, ImageGPA, ImageGPA+ImageMax)
		}
		seg := make([]byte, p.Memsz)
		// A segment with no file bytes (.bss) is all zeros: reading zero
		// bytes from it reports io.EOF, which is not an error here.
		if p.Filesz > 0 {
			if _, err := p.ReadAt(seg[:p.Filesz], 0); err != nil {
				return 0, fmt.Errorf("guest image: reading segment at %#x: %w", p.Paddr, err)
			}
		}
		if _, err := mem.WriteAt(seg, int64(p.Paddr)); err != nil {
			return 0, fmt.Errorf("guest image: %w", err)
		}
		loaded = true
	}
	if !loaded {
		return 0, fmt.Errorf("guest image: no loadable segment")
	}
	if f.Entry < ImageGPA || f.Entry >= ImageGPA+ImageMax {
		return 0, fmt.Errorf("guest image: entry point %#x outside the image", f.Entry)
	}
	return f.Entry, nil
}

// writeBareMetalTables writes the GDT, the page tables and the boot-info
// page into guest memory.
func writeBareMetalTables(mem *GuestMemory, cfg *Config, devices []BootDevice) error {
	gdt := make([]byte, 8*len(gdtEntries))
	for i, e := range gdtEntries {
		binary.LittleEndian.PutUint64(gdt[i*8:], e)
	}
	bi, err := encodeBootInfo(cfg, devices)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		what string
		data []byte
		gpa  int64
	}{
		{"GDT", gdt, GDTGPA},
		{"page tables", buildPageTables(cfg.MemSize), PML4GPA},
		{"boot info", bi, BootInfoGPA},
	} {
		if _, err := mem.WriteAt(w.data, w.gpa); err != nil {
			return fmt.Errorf("writing %s: %w", w.what, err)
		}
	}
	return nil
}
