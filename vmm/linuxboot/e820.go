package linuxboot

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// E820Type is the type of an e820 memory-map entry. Zero is invalid.
type E820Type uint32

// E820 types the kernel knows (arch/x86/include/asm/e820/types.h).
const (
	E820RAM      E820Type = 1
	E820Reserved E820Type = 2
	E820ACPI     E820Type = 3
	E820NVS      E820Type = 4
	E820Unusable E820Type = 5
)

// MaxE820Entries is the room for e820 entries in boot_params (E820_MAX_ENTRIES_ZEROPAGE).
const MaxE820Entries = 128

// E820Entry mirrors struct boot_e820_entry: a packed {u64 addr; u64 size; u32 type}.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type E820Type
}

// End is the first address past the entry.
func (e E820Entry) End() uint64 { return e.Addr + e.Size }

func (e E820Entry) String() string {
	return fmt.Sprintf("[0x%x, 0x%x) type %d", e.Addr, e.End(), e.Type)
}

// Fixed parts of the PC memory map this package reports.
const (
	ebdaStart = 0x9FC00  // usable conventional memory ends here (639 KiB)
	highStart = 0x100000 // 1 MiB: usable memory resumes here
	fourGiB   = 1 << 32
)

// RAMRanges returns where guest RAM of memSize bytes lies in guest-physical space. With
// pciHoleStart zero, RAM is one range [0, memSize). Otherwise the 32-bit PCI hole
// [pciHoleStart, 4 GiB) holds no RAM: RAM is [0, min(memSize, pciHoleStart)) and, for the
// rest, [4 GiB, 4 GiB + memSize - pciHoleStart). The vmm maps its memory slots the same way.
func RAMRanges(memSize, pciHoleStart uint64) []E820Entry {
	if pciHoleStart == 0 || memSize <= pciHoleStart {
		return []E820Entry{{Addr: 0, Size: memSize, Type: E820RAM}}
	}
	return []E820Entry{
		{Addr: 0, Size: pciHoleStart, Type: E820RAM},
		{Addr: fourGiB, Size: memSize - pciHoleStart, Type: E820RAM},
	}
}

// BuildE820 returns the memory map given to the kernel: usable RAM [0, 0x9FC00), reserved
// EBDA/BIOS area [0x9FC00, 1 MiB), usable RAM from 1 MiB to the end of memory (split
// around the PCI hole as RAMRanges describes; the hole itself is a gap, as on real PCs,
// where Linux allocates PCI windows), and the extra ranges, which take precedence over RAM
// they overlap. Extra ranges of one type that overlap or touch are merged; ranges of
// different types may not overlap. The result is sorted, non-overlapping, and passes
// ValidateE820.
func BuildE820(memSize, pciHoleStart uint64, extra []E820Entry) ([]E820Entry, error) {
	if memSize < highStart {
		return nil, fmt.Errorf("build e820: %d bytes of RAM is less than the 1 MiB a PC needs", memSize)
	}
	if pciHoleStart != 0 && (pciHoleStart <= highStart || pciHoleStart >= fourGiB || pciHoleStart%pageSize != 0) {
		return nil, fmt.Errorf("build e820: PCI hole start 0x%x is not a page-aligned address in (1 MiB, 4 GiB)", pciHoleStart)
	}
	res := []E820Entry{{Addr: ebdaStart, Size: highStart - ebdaStart, Type: E820Reserved}}
	for _, e := range extra {
		if e.Type == 0 || e.Type == E820RAM {
			return nil, fmt.Errorf("build e820: extra range %v must be a non-RAM type", e)
		}
		if e.Size == 0 || e.End() < e.Addr {
			return nil, fmt.Errorf("build e820: extra range at 0x%x has size 0x%x: empty or wraps", e.Addr, e.Size)
		}
		res = append(res, e)
	}
	res, err := mergeRanges(res)
	if err != nil {
		return nil, fmt.Errorf("build e820: %w", err)
	}
	var table []E820Entry
	for _, r := range RAMRanges(memSize, pciHoleStart) {
		table = append(table, subtract(r, res)...)
	}
	table = append(table, res...)
	slices.SortFunc(table, func(a, b E820Entry) int { return cmp.Compare(a.Addr, b.Addr) })
	if err := ValidateE820(table); err != nil {
		return nil, fmt.Errorf("build e820: %w", err)
	}
	return table, nil
}

// mergeRanges sorts non-RAM ranges and merges those of one type that overlap or touch.
// Overlapping ranges of different types are an error: which type wins would be a guess.
func mergeRanges(in []E820Entry) ([]E820Entry, error) {
	in = slices.Clone(in)
	slices.SortFunc(in, func(a, b E820Entry) int { return cmp.Compare(a.Addr, b.Addr) })
	var out []E820Entry
	for _, e := range in {
		if n := len(out); n > 0 && e.Addr <= out[n-1].End() {
			last := &out[n-1]
			if e.Addr < last.End() && e.Type != last.Type {
				return nil, fmt.Errorf("range %v overlaps %v of another type", e, *last)
			}
			if e.Type == last.Type {
				last.Size = max(last.End(), e.End()) - last.Addr
				continue
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// subtract returns the parts of r not covered by any of the sorted, disjoint ranges in cut.
func subtract(r E820Entry, cut []E820Entry) []E820Entry {
	var out []E820Entry
	start := r.Addr
	for _, c := range cut {
		if c.End() <= start || c.Addr >= r.End() {
			continue
		}
		if c.Addr > start {
			out = append(out, E820Entry{Addr: start, Size: c.Addr - start, Type: r.Type})
		}
		start = max(start, c.End())
	}
	if start < r.End() {
		out = append(out, E820Entry{Addr: start, Size: r.End() - start, Type: r.Type})
	}
	return out
}

// ValidateE820 checks a table the way the kernel will rely on it: 1 to 128 entries, each
// of a known type, non-empty and not wrapping, sorted by address, none overlapping.
func ValidateE820(table []E820Entry) error {
	if len(table) == 0 {
		return errors.New("e820 table is empty")
	}
	if len(table) > MaxE820Entries {
		return fmt.Errorf("e820 table has %d entries, boot_params holds %d", len(table), MaxE820Entries)
	}
	for i, e := range table {
		if e.Type < E820RAM || e.Type > E820Unusable {
			return fmt.Errorf("e820 entry %d %v: unknown type", i, e)
		}
		if e.Size == 0 || e.End() < e.Addr {
			return fmt.Errorf("e820 entry %d at 0x%x: size 0x%x is empty or wraps", i, e.Addr, e.Size)
		}
		if i > 0 && e.Addr < table[i-1].End() {
			return fmt.Errorf("e820 entry %d %v starts before entry %d %v ends: unsorted or overlapping", i, e, i-1, table[i-1])
		}
	}
	return nil
}
