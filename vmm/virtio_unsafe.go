package vmm

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Ring indexes are 16-bit fields that the guest and the device update while
// the other side reads them. GuestMemory's ReadAt/WriteAt copy byte by byte
// for such short lengths (Go's memmove), so a reader could see half of an
// update (0x00ff → 0x0100 read as 0x01ff). These two helpers move the
// aligned 32-bit word holding {flags, idx} in one access instead.
//
// storeRingWord is the one guest-memory write outside GuestMemory.WriteAt: it
// marks the page through the same VMM dirty bitmap (markDirty), so the next
// checkpoint sees it exactly as it sees WriteAt.

// loadRingWord reads the aligned 32-bit word at gpa atomically.
func loadRingWord(mem *GuestMemory, gpa uint64) (uint32, error) {
	p, err := ringWord(mem, gpa)
	if err != nil {
		return 0, err
	}
	return atomic.LoadUint32(p), nil
}

// storeRingWord writes the aligned 32-bit word at gpa atomically and marks
// its page in the VMM dirty bitmap.
func storeRingWord(mem *GuestMemory, gpa uint64, v uint32) error {
	p, err := ringWord(mem, gpa)
	if err != nil {
		return err
	}
	atomic.StoreUint32(p, v)
	off, _ := mem.offset(gpa, 4) // ringWord checked it
	mem.markDirty(off, 4)
	return nil
}

func ringWord(mem *GuestMemory, gpa uint64) (*uint32, error) {
	if gpa%4 != 0 {
		return nil, fmt.Errorf("ring word at %#x: not 4-byte aligned", gpa)
	}
	off, err := mem.offset(gpa, 4)
	if err != nil {
		return nil, err
	}
	return (*uint32)(unsafe.Pointer(&mem.host[off])), nil
}
