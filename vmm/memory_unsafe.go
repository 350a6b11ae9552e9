package vmm

import (
	"errors"
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

// mapAligned maps size bytes of anonymous, lazily allocated memory at an
// address that is a multiple of align (a power of two): it maps align
// bytes more and unmaps what lies outside the aligned range. unmap
// unmaps it.
func mapAligned(size, align int) ([]byte, error) {
	raw, err := unix.MmapPtr(-1, 0, nil, uintptr(size+align), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	head := (align - int(uintptr(raw)%uintptr(align))) % align
	mem := unsafe.Slice((*byte)(unsafe.Add(raw, head)), size)
	if head > 0 {
		if err := unix.MunmapPtr(raw, uintptr(head)); err != nil {
			return nil, errors.Join(err, unix.MunmapPtr(raw, uintptr(size+align)))
		}
	}
	if tail := align - head; tail > 0 {
		if err := unix.MunmapPtr(unsafe.Add(raw, head+size), uintptr(tail)); err != nil {
			return nil, errors.Join(err, unix.MunmapPtr(unsafe.Add(raw, head), uintptr(size+tail)))
		}
	}
	return mem, nil
}

// unmap unmaps memory that mapAligned mapped.
func unmap(mem []byte) error { return unix.MunmapPtr(unsafe.Pointer(&mem[0]), uintptr(len(mem))) }
