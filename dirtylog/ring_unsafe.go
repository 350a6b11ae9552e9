package dirtylog

import (
	"fmt"
	"os"
	"unsafe"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
	"golang.org/x/sys/unix"
)

// mapRing maps the dirty ring of the vCPU whose fd is vcpuFd: entries
// kvm_dirty_gfn entries at page KVM_DIRTY_LOG_PAGE_OFFSET of the vCPU fd,
// shared with KVM and writable (userspace marks harvested entries RESET).
func mapRing(vcpuFd, entries int) (*vcpuRing, error) {
	if entries <= 0 || entries&(entries-1) != 0 {
		return nil, fmt.Errorf("ring of %d entries: not a power of two", entries)
	}
	off := int64(kvmapi.KVM_DIRTY_LOG_PAGE_OFFSET) * int64(os.Getpagesize())
	mem, err := unix.Mmap(vcpuFd, off, entries*ringEntrySize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes at offset %#x of the vCPU fd: %w", entries*ringEntrySize, off, err)
	}
	ring := unsafe.Slice((*kvmapi.DirtyGFN)(unsafe.Pointer(&mem[0])), entries)
	return &vcpuRing{ring: ring, unmap: func() error { return unix.Munmap(mem) }}, nil
}
