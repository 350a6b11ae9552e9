package dirtylog

import (
	"fmt"
	"os"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm"
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

// rearmDirtyLog has KVM write-protect every page of mem again, so that the
// next write to each is logged: it turns dirty logging off and on again on
// every memory slot (KVM_SET_USER_MEMORY_REGION changing only the flags;
// with dirty rings and without manual protection, turning logging on
// write-protects the whole slot). The regions are the ones vmm.New
// registers, with KVM_MEM_LOG_DIRTY_PAGES. Precondition: the machine is
// paused, so no write falls between off and on.
func rearmDirtyLog(vmFd int, mem *vmm.GuestMemory) error {
	host := mem.Bytes()
	for _, s := range mem.Slots() {
		r := kvm.UserspaceMemoryRegion{
			Slot: s.ID, GuestPhysAddr: s.GPA, MemorySize: s.Size,
			UserspaceAddr: uint64(uintptr(unsafe.Pointer(&host[s.HostOffset]))),
		}
		for _, flags := range []uint32{0, kvmapi.KVM_MEM_LOG_DIRTY_PAGES} {
			r.Flags = flags
			if err := kvm.SetUserMemoryRegion(uintptr(vmFd), &r); err != nil {
				return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d flags %#x: %w", s.ID, flags, err)
			}
		}
	}
	return nil
}
