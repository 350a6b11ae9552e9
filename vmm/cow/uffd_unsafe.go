package cow

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// addressOf is the host address of b's first byte: userfaultfd names pages
// by address.
func addressOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// ioctl issues req on fd with arg, a pointer to the request's struct.
func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// apiHandshake is UFFDIO_API asking for features; it returns the features
// the kernel has.
func apiHandshake(fd int, features uint64) (uint64, error) {
	a := uffdioAPI{API: UFFD_API, Features: features}
	if err := ioctl(fd, UFFDIO_API, unsafe.Pointer(&a)); err != nil {
		return 0, fmt.Errorf("UFFDIO_API features %#x: %w", features, err)
	}
	return a.Features, nil
}

// register is UFFDIO_REGISTER of [start, start+n) in mode; it returns the
// ioctls the range supports (a bit per _UFFDIO_* number).
func register(fd int, start, n, mode uint64) (uint64, error) {
	r := uffdioRegister{Range: uffdioRange{Start: start, Len: n}, Mode: mode}
	if err := ioctl(fd, UFFDIO_REGISTER, unsafe.Pointer(&r)); err != nil {
		return 0, fmt.Errorf("UFFDIO_REGISTER %#x+%#x mode %#x: %w", start, n, mode, err)
	}
	return r.Ioctls, nil
}

// writeProtect is UFFDIO_WRITEPROTECT of [start, start+n): on, the pages
// are write-protected; off, they are not, and the threads waiting on a
// write to them go on.
func writeProtect(fd int, start, n uint64, on bool) error {
	w := uffdioWriteProtect{Range: uffdioRange{Start: start, Len: n}}
	if on {
		w.Mode = UFFDIO_WRITEPROTECT_MODE_WP
	}
	if err := ioctl(fd, UFFDIO_WRITEPROTECT, unsafe.Pointer(&w)); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT %#x+%#x on=%v: %w", start, n, on, err)
	}
	return nil
}
