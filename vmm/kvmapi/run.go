package kvmapi

// Offsets of kvm_run's fixed fields from the start of the vCPU's mmapped
// kvm_run (gokvm's kvm.RunData lays out the same; abi_test.go checks both).
const (
	RunRequestInterruptWindowOffset = 0  // u8, set by userspace
	RunImmediateExitOffset          = 1  // u8, set by userspace
	RunExitReasonOffset             = 8  // u32
	RunReadyForInjectionOffset      = 12 // u8: ready_for_interrupt_injection
	RunIfFlagOffset                 = 13 // u8
	RunExitUnionOffset              = 32 // the exit union (kvm.RunData.Data)
)

// kvm_run's register synchronisation (KVM_CAP_SYNC_REGS): the parts of the
// vCPU's state named in kvm_valid_regs are stored in kvm_run as KVM_RUN
// returns, whatever it returns for, as KVM_GET_REGS, KVM_GET_SREGS and
// KVM_GET_VCPU_EVENTS would read them.
const (
	RunValidRegsOffset = 288 // u64 kvm_valid_regs, set by userspace
	// kvm_run.s.regs (struct kvm_sync_regs): kvm_regs, then kvm_sregs,
	// then kvm_vcpu_events.
	RunSyncRegsOffset   = 304
	RunSyncSregsOffset  = RunSyncRegsOffset + 144
	RunSyncEventsOffset = RunSyncSregsOffset + 312

	KVM_SYNC_X86_REGS   = 1 << 0
	KVM_SYNC_X86_SREGS  = 1 << 1
	KVM_SYNC_X86_EVENTS = 1 << 2
)

// Offsets inside kvm_run's exit union (kvm.RunData.Data), as the kernel lays
// them out; abi_test.go checks them against <linux/kvm.h>.
const (
	// io: direction u8 @0, size u8 @1, port u16 @2, count u32 @4, data_offset u64 @8.
	RunIODirectionOffset  = 0
	RunIOSizeOffset       = 1
	RunIOPortOffset       = 2
	RunIOCountOffset      = 4
	RunIODataOffsetOffset = 8
	// mmio: phys_addr u64 @0, data [8]u8 @8, len u32 @16, is_write u8 @20.
	RunMMIOPhysAddrOffset = 0
	RunMMIODataOffset     = 8
	RunMMIOLenOffset      = 16
	RunMMIOIsWriteOffset  = 20
	// debug.arch: exception u32 @0, pad u32 @4, pc u64 @8, dr6 u64 @16, dr7 u64 @24.
	RunDebugExceptionOffset = 0
	RunDebugPCOffset        = 8
	RunDebugDR6Offset       = 16
	RunDebugDR7Offset       = 24

	// KVM_EXIT_IO directions.
	KVM_EXIT_IO_IN  = 0
	KVM_EXIT_IO_OUT = 1
)

// Exit reasons (kvm_run.exit_reason) that gokvm does not name.
const (
	KVM_EXIT_SYSTEM_EVENT    = 24
	KVM_EXIT_DIRTY_RING_FULL = 31
)
