package kvmapi

// DirtyLog mirrors struct kvm_dirty_log.
type DirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap uint64 // user address of the bitmap
}

// ClearDirtyLog mirrors struct kvm_clear_dirty_log.
type ClearDirtyLog struct {
	Slot      uint32
	NumPages  uint32
	FirstPage uint64
	Bitmap    uint64 // user address of the bitmap
}

// EnableCap mirrors struct kvm_enable_cap.
type EnableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]uint8
}

// XSaveSize is sizeof(struct kvm_xsave): the legacy 4 KiB XSAVE area. With
// KVM_CAP_XSAVE2 the kernel may need more (AMX); see XSaveBufferSize.
const XSaveSize = 4096

// MSREntry mirrors struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// msrsHeader mirrors the fixed part of struct kvm_msrs.
type msrsHeader struct {
	NMSRs uint32
	_     uint32
}

// msrListHeader mirrors the fixed part of struct kvm_msr_list.
type msrListHeader struct {
	NMSRs uint32
}

// GuestDebug mirrors struct kvm_guest_debug (x86: struct kvm_guest_debug_arch
// holds debugreg[8]).
type GuestDebug struct {
	Control  uint32
	_        uint32
	DebugReg [8]uint64
}

// DebugExitArch mirrors struct kvm_debug_exit_arch (x86): what kvm_run's
// exit union holds after KVM_EXIT_DEBUG. DR6 says why (DR_TRAP0-3: a
// hardware breakpoint; DR_STEP: a single step); PC is the linear RIP.
type DebugExitArch struct {
	Exception uint32
	_         uint32
	PC        uint64
	DR6       uint64
	DR7       uint64
}

// InterruptRequest mirrors struct kvm_interrupt, KVM_INTERRUPT's argument.
type InterruptRequest struct {
	IRQ uint32
}

// IRQLevel mirrors struct kvm_irq_level.
type IRQLevel struct {
	IRQ   uint32
	Level uint32
}

// DirtyGFN mirrors struct kvm_dirty_gfn, one entry of a vCPU's dirty ring.
type DirtyGFN struct {
	Flags  uint32
	Slot   uint32 // address space id << 16 | slot id
	Offset uint64 // page offset within the slot
}
