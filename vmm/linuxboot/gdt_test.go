package linuxboot

import (
	"encoding/binary"
	"testing"
)

// TestBootGDTBytes checks the descriptors against their well-known encodings: a flat
// 64-bit code segment (0x00AF9B000000FFFF) and a flat data segment (0x00CF93000000FFFF).
func TestBootGDTBytes(t *testing.T) {
	gdt := bootGDT()
	if len(gdt) != 32 {
		t.Fatalf("GDT is %d bytes, want 32", len(gdt))
	}
	want := []uint64{0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF}
	for i, w := range want {
		if got := binary.LittleEndian.Uint64(gdt[i*8:]); got != w {
			t.Errorf("descriptor %d (selector 0x%x) = 0x%016x, want 0x%016x", i, i*8, got, w)
		}
	}
}

// decodeDescriptor is the inverse of the SDM layout, written independently of descriptor.
func decodeDescriptor(sel uint16, d uint64) Segment {
	limit := uint32(d&0xFFFF | (d>>48&0xF)<<16)
	g := uint8(d >> 55 & 1)
	if g == 1 {
		limit = limit<<12 | 0xFFF
	}
	return Segment{
		Selector: sel,
		Base:     d>>16&0xFFFFFF | (d>>56&0xFF)<<24,
		Limit:    limit,
		Type:     uint8(d >> 40 & 0xF),
		S:        uint8(d >> 44 & 1),
		DPL:      uint8(d >> 45 & 3),
		Present:  uint8(d >> 47 & 1),
		L:        uint8(d >> 53 & 1),
		DB:       uint8(d >> 54 & 1),
		G:        g,
	}
}

// TestBootSegmentsMatchGDT: the descriptor caches Entry hands the vmm are exactly what
// the CPU would load from the GDT for those selectors, and they obey the protocol: a 4 GiB
// flat execute/read 64-bit code segment, a 4 GiB flat read/write data segment.
func TestBootSegmentsMatchGDT(t *testing.T) {
	gdt := bootGDT()
	for _, s := range []Segment{bootCode, bootData} {
		if got := decodeDescriptor(s.Selector, binary.LittleEndian.Uint64(gdt[s.Selector:])); got != s {
			t.Errorf("selector 0x%x: GDT holds %+v, Entry says %+v", s.Selector, got, s)
		}
		if s.Base != 0 || s.Limit != 0xFFFFFFFF || s.Present != 1 || s.S != 1 || s.DPL != 0 {
			t.Errorf("selector 0x%x is not a present flat ring-0 segment: %+v", s.Selector, s)
		}
	}
	if bootCode.Selector != 0x10 || bootCode.Type&0x8 == 0 || bootCode.Type&0x2 == 0 || bootCode.L != 1 || bootCode.DB != 0 {
		t.Errorf("__BOOT_CS is not 0x10 execute/read 64-bit: %+v", bootCode)
	}
	if bootData.Selector != 0x18 || bootData.Type&0x8 != 0 || bootData.Type&0x2 == 0 {
		t.Errorf("__BOOT_DS is not 0x18 read/write data: %+v", bootData)
	}
}
