package vmm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// uintptrOf returns the host address of b's first byte, for passing to KVM.
// The slice must stay mapped for as long as KVM uses the address: guest
// memory is never unmapped before its VM is closed.
func uintptrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// mincore fills vec with one byte per page of b: bit 0 set if resident.
func mincore(b, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptrOf(b), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
