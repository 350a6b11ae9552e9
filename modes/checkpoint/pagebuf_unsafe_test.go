package checkpoint

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// mincore fills vec with one byte per page of b (which starts on a page):
// bit 0 set if the page is in memory.
func mincore(b, vec []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	if errno != 0 {
		return errno
	}
	return nil
}
