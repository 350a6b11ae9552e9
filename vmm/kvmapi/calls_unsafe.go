package kvmapi

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// Run enters the guest on the calling thread (which must be the vCPU's own
// locked thread). kicked is true when KVM_RUN returned EINTR: a signal or
// kvm_run.immediate_exit made it return before or instead of an exit, and
// any pending I/O completion has been applied. That is a result, not an error.
func Run(vcpuFd int) (kicked bool, err error) {
	_, err = ioctl(vcpuFd, _KVM_RUN, 0)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, unix.EINTR):
		return true, nil
	default:
		return false, fmt.Errorf("KVM_RUN: %w", err)
	}
}

// SetIdentityMapAddr sets the guest-physical address of the one-page identity
// map that Intel VMX needs for real mode; it must not overlap guest RAM.
func SetIdentityMapAddr(vmFd int, gpa uint64) error {
	if _, err := ioctl(vmFd, _KVM_SET_IDENTITY_MAP_ADDR, uintptr(unsafe.Pointer(&gpa))); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", gpa, err)
	}
	return nil
}

// GetDirtyLog fills bitmap with the slot's dirty pages (bit i = page i of the
// slot). Without manual protection it also re-protects them; with
// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled it does not, see ClearDirtyLogPages.
// bitmap must hold at least one bit per page of the slot, rounded up to 64.
func GetDirtyLog(vmFd int, slot uint32, bitmap []uint64) error {
	if len(bitmap) == 0 {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: empty bitmap", slot)
	}
	dl := DirtyLog{Slot: slot, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	if _, err := ioctl(vmFd, _KVM_GET_DIRTY_LOG, uintptr(unsafe.Pointer(&dl))); err != nil {
		return fmt.Errorf("KVM_GET_DIRTY_LOG slot %d: %w", slot, err)
	}
	return nil
}

// ClearDirtyLogPages re-protects the pages of slot whose bits are set in
// bitmap, which covers pages [firstPage, firstPage+numPages). firstPage must
// be a multiple of 64, and numPages too unless the range ends at the slot's
// end.
func ClearDirtyLogPages(vmFd int, slot uint32, firstPage uint64, numPages uint32, bitmap []uint64) error {
	if len(bitmap)*64 < int(numPages) {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d: bitmap of %d bits for %d pages", slot, len(bitmap)*64, numPages)
	}
	if numPages == 0 {
		return nil
	}
	c := ClearDirtyLog{Slot: slot, NumPages: numPages, FirstPage: firstPage, Bitmap: uint64(uintptr(unsafe.Pointer(&bitmap[0])))}
	if _, err := ioctl(vmFd, _KVM_CLEAR_DIRTY_LOG, uintptr(unsafe.Pointer(&c))); err != nil {
		return fmt.Errorf("KVM_CLEAR_DIRTY_LOG slot %d pages [%d,+%d): %w", slot, firstPage, numPages, err)
	}
	return nil
}

// ResetDirtyRings tells KVM that every ring entry marked RESET may be reused
// and re-protects those pages. It returns how many entries were reset.
func ResetDirtyRings(vmFd int) (int, error) {
	r, err := ioctl(vmFd, _KVM_RESET_DIRTY_RINGS, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_RESET_DIRTY_RINGS: %w", err)
	}
	return int(r), nil
}

// EnableCapability calls KVM_ENABLE_CAP on fd (a VM or vCPU fd).
func EnableCapability(fd int, capability uint32, args ...uint64) error {
	if len(args) > 4 {
		return fmt.Errorf("KVM_ENABLE_CAP %d: %d arguments, at most 4", capability, len(args))
	}
	ec := EnableCap{Cap: capability}
	copy(ec.Args[:], args)
	if _, err := ioctl(fd, _KVM_ENABLE_CAP, uintptr(unsafe.Pointer(&ec))); err != nil {
		return fmt.Errorf("KVM_ENABLE_CAP %d %v: %w", capability, args, err)
	}
	return nil
}

// XSaveBufferSize returns how many bytes GetXSave needs: the size
// KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) reports, or XSaveSize without it.
func XSaveBufferSize(vmFd int) int {
	r, err := kvm.CheckExtension(uintptr(vmFd), kvm.Capability(KVM_CAP_XSAVE2))
	if err != nil || int(r) < XSaveSize {
		return XSaveSize
	}
	return int(r)
}

// GetXSave reads the vCPU's XSAVE area into buf, whose length must come from
// XSaveBufferSize. A buffer larger than XSaveSize uses KVM_GET_XSAVE2.
func GetXSave(vcpuFd int, buf []byte) error {
	if len(buf) < XSaveSize {
		return fmt.Errorf("KVM_GET_XSAVE: buffer of %d bytes, need %d", len(buf), XSaveSize)
	}
	req, name := _KVM_GET_XSAVE, "KVM_GET_XSAVE"
	if len(buf) > XSaveSize {
		req, name = _KVM_GET_XSAVE2, "KVM_GET_XSAVE2"
	}
	if _, err := ioctl(vcpuFd, req, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// SetXSave loads the vCPU's XSAVE area from buf (as returned by GetXSave).
func SetXSave(vcpuFd int, buf []byte) error {
	if len(buf) < XSaveSize {
		return fmt.Errorf("KVM_SET_XSAVE: buffer of %d bytes, need %d", len(buf), XSaveSize)
	}
	if _, err := ioctl(vcpuFd, _KVM_SET_XSAVE, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return fmt.Errorf("KVM_SET_XSAVE: %w", err)
	}
	return nil
}

// GetMSRs reads the MSRs named by entries[i].Index into entries[i].Data. It
// fails unless every one was read.
func GetMSRs(vcpuFd int, entries []MSREntry) error {
	return msrs(vcpuFd, _KVM_GET_MSRS, "KVM_GET_MSRS", entries)
}

// SetMSRs writes every entry. It fails unless every one was written.
func SetMSRs(vcpuFd int, entries []MSREntry) error {
	return msrs(vcpuFd, _KVM_SET_MSRS, "KVM_SET_MSRS", entries)
}

func msrs(vcpuFd int, req uintptr, name string, entries []MSREntry) error {
	if len(entries) == 0 {
		return nil
	}
	hdr := int(unsafe.Sizeof(msrsHeader{}))
	esz := int(unsafe.Sizeof(MSREntry{}))
	buf := make([]byte, hdr+len(entries)*esz)
	(*msrsHeader)(unsafe.Pointer(&buf[0])).NMSRs = uint32(len(entries))
	out := unsafe.Slice((*MSREntry)(unsafe.Pointer(&buf[hdr])), len(entries))
	copy(out, entries)
	n, err := ioctl(vcpuFd, req, uintptr(unsafe.Pointer(&buf[0])))
	if err != nil {
		return fmt.Errorf("%s (%d MSRs): %w", name, len(entries), err)
	}
	if int(n) != len(entries) {
		return fmt.Errorf("%s: only %d of %d MSRs done; first refused: %#x", name, n, len(entries), entries[n].Index)
	}
	copy(entries, out)
	return nil
}

// MSRIndexList returns the MSRs KVM can save and restore for a guest
// (KVM_GET_MSR_INDEX_LIST on the /dev/kvm fd).
func MSRIndexList(kvmFd int) ([]uint32, error) {
	const max = 4096
	buf := make([]uint32, 1+max)
	buf[0] = max
	if _, err := ioctl(kvmFd, _KVM_GET_MSR_INDEX_LIST, uintptr(unsafe.Pointer(&buf[0]))); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	n := buf[0]
	if n > max {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %d entries, more than %d", n, max)
	}
	return append([]uint32(nil), buf[1:1+n]...), nil
}

// SetGuestDebug sets the vCPU's guest-debug control (KVM_GUESTDBG_*) and, with
// KVM_GUESTDBG_USE_HW_BP, its debug registers DR0-3 and DR7 (debugreg[7]).
func SetGuestDebug(vcpuFd int, control uint32, debugRegs [8]uint64) error {
	gd := GuestDebug{Control: control, DebugReg: debugRegs}
	if _, err := ioctl(vcpuFd, _KVM_SET_GUEST_DEBUG, uintptr(unsafe.Pointer(&gd))); err != nil {
		return fmt.Errorf("KVM_SET_GUEST_DEBUG control %#x: %w", control, err)
	}
	return nil
}

// InjectInterrupt queues external interrupt vector for injection at the
// vCPU's next entry (KVM_INTERRUPT, machines without the in-kernel
// irqchip). gokvm's kvm.InjectInterrupt passes the vector where the kernel
// reads a pointer to struct kvm_interrupt, so it fails with EFAULT.
func InjectInterrupt(vcpuFd int, vector uint8) error {
	req := InterruptRequest{IRQ: uint32(vector)}
	if _, err := ioctl(vcpuFd, _KVM_INTERRUPT, uintptr(unsafe.Pointer(&req))); err != nil {
		return fmt.Errorf("KVM_INTERRUPT vector %d: %w", vector, err)
	}
	return nil
}

// IRQLine sets an in-kernel irqchip input line (a GSI) to level.
func IRQLine(vmFd int, irq uint32, level bool) error {
	l := IRQLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	if _, err := ioctl(vmFd, _KVM_IRQ_LINE, uintptr(unsafe.Pointer(&l))); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE irq %d level %d: %w", irq, l.Level, err)
	}
	return nil
}
