package linuxboot

import "encoding/binary"

// Segment selectors the 64-bit boot protocol requires (__BOOT_CS, __BOOT_DS).
const (
	BootCS = 0x10
	BootDS = 0x18
)

// Segment is a segment register as the vmm loads it into the vCPU: the selector and the
// descriptor-cache fields of struct kvm_segment. Limit is in bytes (already scaled by G).
type Segment struct {
	Selector uint16
	Base     uint64
	Limit    uint32
	Type     uint8 // 4-bit descriptor type: 0xB execute/read accessed, 0x3 read/write accessed
	Present  uint8
	DPL      uint8
	DB       uint8 // default operation size; must be 0 for a 64-bit code segment
	S        uint8 // 1: code or data (not system)
	L        uint8 // 1: 64-bit code segment
	G        uint8 // 1: limit in 4 KiB units
}

// The boot GDT: null, unused, __BOOT_CS, __BOOT_DS. Both are 4 GiB flat segments, as the
// protocol asks; the code segment is a 64-bit (L=1, D=0) execute/read segment, the data
// segment read/write.
var (
	bootCode = Segment{Selector: BootCS, Limit: 0xFFFFFFFF, Type: 0xB, Present: 1, S: 1, L: 1, G: 1}
	bootData = Segment{Selector: BootDS, Limit: 0xFFFFFFFF, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
)

// gdtSize is four 8-byte descriptors.
const gdtSize = 4 * 8

// bootGDT returns the GDT bytes: descriptors at their selectors' offsets.
func bootGDT() []byte {
	gdt := make([]byte, gdtSize)
	binary.LittleEndian.PutUint64(gdt[BootCS:], descriptor(bootCode))
	binary.LittleEndian.PutUint64(gdt[BootDS:], descriptor(bootData))
	return gdt
}

// descriptor encodes a code/data segment descriptor (Intel SDM vol. 3, 3.4.5). A
// granular segment stores its limit in 4 KiB units.
func descriptor(s Segment) uint64 {
	limit := uint64(s.Limit)
	if s.G != 0 {
		limit >>= 12
	}
	base := s.Base & 0xFFFFFFFF
	access := uint64(s.Type&0xF) | uint64(s.S&1)<<4 | uint64(s.DPL&3)<<5 | uint64(s.Present&1)<<7
	flags := uint64(s.L&1)<<1 | uint64(s.DB&1)<<2 | uint64(s.G&1)<<3
	return limit&0xFFFF |
		(base&0xFFFFFF)<<16 |
		access<<40 |
		(limit>>16&0xF)<<48 |
		flags<<52 |
		(base>>24&0xFF)<<56
}
