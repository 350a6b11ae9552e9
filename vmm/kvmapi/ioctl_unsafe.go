package kvmapi

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl direction bits and field widths, from <asm-generic/ioctl.h>.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNRShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30

	kvmio = 0xAE
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<iocDirShift | kvmio<<iocTypeShift | nr<<iocNRShift | size<<iocSizeShift
}

func io(nr uintptr) uintptr         { return ioc(iocNone, nr, 0) }
func ior(nr, size uintptr) uintptr  { return ioc(iocRead, nr, size) }
func iow(nr, size uintptr) uintptr  { return ioc(iocWrite, nr, size) }
func iowr(nr, size uintptr) uintptr { return ioc(iocRead|iocWrite, nr, size) }

// ioctl numbers, named as in <linux/kvm.h>.
var (
	_KVM_RUN                   = io(0x80)
	_KVM_SET_IDENTITY_MAP_ADDR = iow(0x48, 8)
	_KVM_GET_DIRTY_LOG         = iow(0x42, unsafe.Sizeof(DirtyLog{}))
	_KVM_CLEAR_DIRTY_LOG       = iowr(0xc0, unsafe.Sizeof(ClearDirtyLog{}))
	_KVM_RESET_DIRTY_RINGS     = io(0xc7)
	_KVM_ENABLE_CAP            = iow(0xa3, unsafe.Sizeof(EnableCap{}))
	_KVM_GET_XSAVE             = ior(0xa4, XSaveSize)
	_KVM_SET_XSAVE             = iow(0xa5, XSaveSize)
	_KVM_GET_XSAVE2            = ior(0xcf, XSaveSize)
	_KVM_GET_MSRS              = iowr(0x88, unsafe.Sizeof(msrsHeader{}))
	_KVM_SET_MSRS              = iow(0x89, unsafe.Sizeof(msrsHeader{}))
	_KVM_GET_MSR_INDEX_LIST    = iowr(0x02, unsafe.Sizeof(msrListHeader{}))
	_KVM_SET_GUEST_DEBUG       = iow(0x9b, unsafe.Sizeof(GuestDebug{}))
	_KVM_IRQ_LINE              = iow(0x61, unsafe.Sizeof(IRQLevel{}))
	_KVM_INTERRUPT             = iow(0x86, unsafe.Sizeof(InterruptRequest{}))
)

// Capabilities, for CheckExtension and EnableCap.
const (
	KVM_CAP_IRQCHIP                   = 0
	KVM_CAP_USER_MEMORY               = 3
	KVM_CAP_NR_VCPUS                  = 9
	KVM_CAP_SET_GUEST_DEBUG           = 23
	KVM_CAP_PIT2                      = 33
	KVM_CAP_ADJUST_CLOCK              = 39
	KVM_CAP_VCPU_EVENTS               = 41
	KVM_CAP_DEBUGREGS                 = 50
	KVM_CAP_XSAVE                     = 55
	KVM_CAP_XCRS                      = 56
	KVM_CAP_MAX_VCPUS                 = 66
	KVM_CAP_SYNC_REGS                 = 74
	KVM_CAP_IMMEDIATE_EXIT            = 136
	KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
	KVM_CAP_DIRTY_LOG_RING            = 192
	KVM_CAP_XSAVE2                    = 208
	KVM_CAP_DIRTY_LOG_RING_ACQ_REL    = 223
)

// Flags and constants used with the structs below.
const (
	KVM_MEM_LOG_DIRTY_PAGES = 1 << 0

	KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
	KVM_DIRTY_LOG_INITIALLY_SET         = 1 << 1

	// KVM_DIRTY_LOG_PAGE_OFFSET is, on x86, the page offset in a vCPU fd's
	// mmap at which its dirty ring starts.
	KVM_DIRTY_LOG_PAGE_OFFSET = 64
	KVM_DIRTY_GFN_F_DIRTY     = 1 << 0
	KVM_DIRTY_GFN_F_RESET     = 1 << 1

	KVM_GUESTDBG_ENABLE     = 0x00000001
	KVM_GUESTDBG_SINGLESTEP = 0x00000002
	KVM_GUESTDBG_USE_SW_BP  = 0x00010000
	KVM_GUESTDBG_USE_HW_BP  = 0x00020000
)

func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}
