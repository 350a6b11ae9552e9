package kvmapi

import (
	"testing"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/abitest"
)

// abiProgram prints, for each name, the kernel's value: ioctl numbers and
// struct sizes from the system's <linux/kvm.h>.
const abiProgram = `
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>
#include <asm/debugreg.h>
#define P(name, v) printf("%s %lu\n", name, (unsigned long)(v))
int main(void) {
	P("KVM_RUN", KVM_RUN);
	P("KVM_SET_IDENTITY_MAP_ADDR", KVM_SET_IDENTITY_MAP_ADDR);
	P("KVM_GET_DIRTY_LOG", KVM_GET_DIRTY_LOG);
	P("KVM_CLEAR_DIRTY_LOG", KVM_CLEAR_DIRTY_LOG);
	P("KVM_RESET_DIRTY_RINGS", KVM_RESET_DIRTY_RINGS);
	P("KVM_ENABLE_CAP", KVM_ENABLE_CAP);
	P("KVM_GET_XSAVE", KVM_GET_XSAVE);
	P("KVM_SET_XSAVE", KVM_SET_XSAVE);
	P("KVM_GET_XSAVE2", KVM_GET_XSAVE2);
	P("KVM_GET_MSRS", KVM_GET_MSRS);
	P("KVM_SET_MSRS", KVM_SET_MSRS);
	P("KVM_GET_MSR_INDEX_LIST", KVM_GET_MSR_INDEX_LIST);
	P("KVM_SET_GUEST_DEBUG", KVM_SET_GUEST_DEBUG);
	P("KVM_IRQ_LINE", KVM_IRQ_LINE);
	P("KVM_INTERRUPT", KVM_INTERRUPT);
	P("KVM_TRANSLATE", KVM_TRANSLATE);
	P("KVM_DIRTY_LOG_PAGE_OFFSET", KVM_DIRTY_LOG_PAGE_OFFSET);
	P("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	P("KVM_CAP_DIRTY_LOG_RING", KVM_CAP_DIRTY_LOG_RING);
	P("KVM_CAP_DIRTY_LOG_RING_ACQ_REL", KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
	P("KVM_CAP_XSAVE2", KVM_CAP_XSAVE2);
	P("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT);
	P("KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS);
	P("KVM_CAP_SYNC_REGS", KVM_CAP_SYNC_REGS);
	P("KVM_SYNC_X86_REGS", KVM_SYNC_X86_REGS);
	P("KVM_SYNC_X86_SREGS", KVM_SYNC_X86_SREGS);
	P("KVM_SYNC_X86_EVENTS", KVM_SYNC_X86_EVENTS);
	P("KVM_CAP_NR_VCPUS", KVM_CAP_NR_VCPUS);
	P("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP);
	P("KVM_CAP_PIT2", KVM_CAP_PIT2);
	P("KVM_CAP_SET_GUEST_DEBUG", KVM_CAP_SET_GUEST_DEBUG);
	P("KVM_GUESTDBG_ENABLE", KVM_GUESTDBG_ENABLE);
	P("KVM_GUESTDBG_SINGLESTEP", KVM_GUESTDBG_SINGLESTEP);
	P("KVM_GUESTDBG_USE_HW_BP", KVM_GUESTDBG_USE_HW_BP);
	P("KVM_GUESTDBG_USE_SW_BP", KVM_GUESTDBG_USE_SW_BP);
	P("KVM_DIRTY_GFN_F_DIRTY", KVM_DIRTY_GFN_F_DIRTY);
	P("KVM_DIRTY_GFN_F_RESET", KVM_DIRTY_GFN_F_RESET);
	P("KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE", KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
	P("KVM_DIRTY_LOG_INITIALLY_SET", KVM_DIRTY_LOG_INITIALLY_SET);
	P("sizeof kvm_dirty_log", sizeof(struct kvm_dirty_log));
	P("sizeof kvm_clear_dirty_log", sizeof(struct kvm_clear_dirty_log));
	P("sizeof kvm_enable_cap", sizeof(struct kvm_enable_cap));
	P("sizeof kvm_xsave", sizeof(struct kvm_xsave));
	P("sizeof kvm_msr_entry", sizeof(struct kvm_msr_entry));
	P("sizeof kvm_guest_debug", sizeof(struct kvm_guest_debug));
	P("sizeof kvm_irq_level", sizeof(struct kvm_irq_level));
	P("sizeof kvm_interrupt", sizeof(struct kvm_interrupt));
	P("sizeof kvm_debug_exit_arch", sizeof(struct kvm_debug_exit_arch));
	P("sizeof kvm_guest_debug_arch", sizeof(struct kvm_guest_debug_arch));
	P("offsetof kvm_guest_debug.arch", offsetof(struct kvm_guest_debug, arch));
	P("sizeof kvm_translation", sizeof(struct kvm_translation));
	P("offsetof kvm_translation.valid", offsetof(struct kvm_translation, valid));
	P("sizeof kvm_dirty_gfn", sizeof(struct kvm_dirty_gfn));
	P("sizeof kvm_regs", sizeof(struct kvm_regs));
	P("sizeof kvm_sregs", sizeof(struct kvm_sregs));
	P("sizeof kvm_lapic_state", sizeof(struct kvm_lapic_state));
	P("sizeof kvm_vcpu_events", sizeof(struct kvm_vcpu_events));
	P("sizeof kvm_debugregs", sizeof(struct kvm_debugregs));
	P("sizeof kvm_xcrs", sizeof(struct kvm_xcrs));
	P("sizeof kvm_irqchip", sizeof(struct kvm_irqchip));
	P("sizeof kvm_pit_state2", sizeof(struct kvm_pit_state2));
	P("sizeof kvm_clock_data", sizeof(struct kvm_clock_data));
	P("sizeof kvm_mp_state", sizeof(struct kvm_mp_state));
	P("sizeof kvm_cpuid_entry2", sizeof(struct kvm_cpuid_entry2));
	P("sizeof kvm_userspace_memory_region", sizeof(struct kvm_userspace_memory_region));
	P("offsetof kvm_run.request_interrupt_window", offsetof(struct kvm_run, request_interrupt_window));
	P("offsetof kvm_run.immediate_exit", offsetof(struct kvm_run, immediate_exit));
	P("offsetof kvm_run.exit_reason", offsetof(struct kvm_run, exit_reason));
	P("offsetof kvm_run.ready_for_interrupt_injection", offsetof(struct kvm_run, ready_for_interrupt_injection));
	P("offsetof kvm_run.if_flag", offsetof(struct kvm_run, if_flag));
	P("offsetof kvm_run.io", offsetof(struct kvm_run, io));
	P("offsetof kvm_run.io.direction", offsetof(struct kvm_run, io.direction));
	P("offsetof kvm_run.io.size", offsetof(struct kvm_run, io.size));
	P("offsetof kvm_run.io.port", offsetof(struct kvm_run, io.port));
	P("offsetof kvm_run.io.count", offsetof(struct kvm_run, io.count));
	P("offsetof kvm_run.io.data_offset", offsetof(struct kvm_run, io.data_offset));
	P("offsetof kvm_run.mmio.phys_addr", offsetof(struct kvm_run, mmio.phys_addr));
	P("offsetof kvm_run.mmio.data", offsetof(struct kvm_run, mmio.data));
	P("offsetof kvm_run.mmio.len", offsetof(struct kvm_run, mmio.len));
	P("offsetof kvm_run.mmio.is_write", offsetof(struct kvm_run, mmio.is_write));
	P("offsetof kvm_run.debug.arch.exception", offsetof(struct kvm_run, debug.arch.exception));
	P("offsetof kvm_run.debug.arch.pc", offsetof(struct kvm_run, debug.arch.pc));
	P("offsetof kvm_run.debug.arch.dr6", offsetof(struct kvm_run, debug.arch.dr6));
	P("offsetof kvm_run.debug.arch.dr7", offsetof(struct kvm_run, debug.arch.dr7));
	P("offsetof kvm_run.kvm_valid_regs", offsetof(struct kvm_run, kvm_valid_regs));
	P("offsetof kvm_run.s.regs.regs", offsetof(struct kvm_run, s.regs.regs));
	P("offsetof kvm_run.s.regs.sregs", offsetof(struct kvm_run, s.regs.sregs));
	P("offsetof kvm_run.s.regs.events", offsetof(struct kvm_run, s.regs.events));
	P("offsetof kvm_regs.rip", offsetof(struct kvm_regs, rip));
	P("offsetof kvm_regs.rflags", offsetof(struct kvm_regs, rflags));
	P("offsetof kvm_sregs.cs", offsetof(struct kvm_sregs, cs));
	P("offsetof kvm_segment.l", offsetof(struct kvm_segment, l));
	P("offsetof kvm_sregs.idt", offsetof(struct kvm_sregs, idt));
	P("offsetof kvm_sregs.efer", offsetof(struct kvm_sregs, efer));
	P("offsetof kvm_vcpu_events.interrupt.injected", offsetof(struct kvm_vcpu_events, interrupt.injected));
	P("offsetof kvm_vcpu_events.interrupt.nr", offsetof(struct kvm_vcpu_events, interrupt.nr));
	P("offsetof kvm_vcpu_events.exception_payload", offsetof(struct kvm_vcpu_events, exception_payload));
	P("KVM_EXIT_IO_IN", KVM_EXIT_IO_IN);
	P("KVM_EXIT_IO_OUT", KVM_EXIT_IO_OUT);
	P("KVM_EXIT_SYSTEM_EVENT", KVM_EXIT_SYSTEM_EVENT);
	P("KVM_EXIT_DIRTY_RING_FULL", KVM_EXIT_DIRTY_RING_FULL);
	P("KVM_EXIT_IO", KVM_EXIT_IO);
	P("KVM_EXIT_MMIO", KVM_EXIT_MMIO);
	P("KVM_EXIT_HLT", KVM_EXIT_HLT);
	P("KVM_EXIT_DEBUG", KVM_EXIT_DEBUG);
	P("KVM_EXIT_SHUTDOWN", KVM_EXIT_SHUTDOWN);
	P("KVM_EXIT_IRQ_WINDOW_OPEN", KVM_EXIT_IRQ_WINDOW_OPEN);
	P("KVM_EXIT_INTR", KVM_EXIT_INTR);
	P("KVM_EXIT_FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY);
	P("KVM_EXIT_INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR);
	P("DR_TRAP0", DR_TRAP0);
	P("DR_STEP", DR_STEP);
	P("DR_GLOBAL_ENABLE", DR_GLOBAL_ENABLE);
	P("DR_ENABLE_SIZE", DR_ENABLE_SIZE);
	P("DR_CONTROL_SHIFT", DR_CONTROL_SHIFT);
	P("DR_CONTROL_SIZE", DR_CONTROL_SIZE);
	P("DR_RW_EXECUTE", DR_RW_EXECUTE);
	P("DR_LEN_1", DR_LEN_1);
	P("DR_GLOBAL_SLOWDOWN", DR_GLOBAL_SLOWDOWN);
	return 0;
}
`

// TestABIMatchesKernelHeaders checks every ioctl number, constant and struct
// layout ftckpt uses against the system's <linux/kvm.h>, compiled with gcc.
// It needs no /dev/kvm: it is what keeps the KVM layer honest on machines
// that cannot run a guest.
func TestABIMatchesKernelHeaders(t *testing.T) {
	var run kvm.RunData
	var ev kvm.VCPUEvents
	var dbg DebugExitArch
	var gd GuestDebug
	var sregs kvm.Sregs
	var regs kvm.Regs
	var seg kvm.Segment
	var tr kvm.Translation
	union := uint64(unsafe.Offsetof(run.Data))
	ours := map[string]uint64{
		"KVM_RUN":                   uint64(_KVM_RUN),
		"KVM_SET_IDENTITY_MAP_ADDR": uint64(_KVM_SET_IDENTITY_MAP_ADDR),
		"KVM_GET_DIRTY_LOG":         uint64(_KVM_GET_DIRTY_LOG),
		"KVM_CLEAR_DIRTY_LOG":       uint64(_KVM_CLEAR_DIRTY_LOG),
		"KVM_RESET_DIRTY_RINGS":     uint64(_KVM_RESET_DIRTY_RINGS),
		"KVM_ENABLE_CAP":            uint64(_KVM_ENABLE_CAP),
		"KVM_GET_XSAVE":             uint64(_KVM_GET_XSAVE),
		"KVM_SET_XSAVE":             uint64(_KVM_SET_XSAVE),
		"KVM_GET_XSAVE2":            uint64(_KVM_GET_XSAVE2),
		"KVM_GET_MSRS":              uint64(_KVM_GET_MSRS),
		"KVM_SET_MSRS":              uint64(_KVM_SET_MSRS),
		"KVM_GET_MSR_INDEX_LIST":    uint64(_KVM_GET_MSR_INDEX_LIST),
		"KVM_SET_GUEST_DEBUG":       uint64(_KVM_SET_GUEST_DEBUG),
		"KVM_IRQ_LINE":              uint64(_KVM_IRQ_LINE),
		"KVM_INTERRUPT":             uint64(_KVM_INTERRUPT),
		// gokvm's kvm.Translate computes the number the same way.
		"KVM_TRANSLATE":                       uint64(iowr(0x85, unsafe.Sizeof(kvm.Translation{}))),
		"KVM_DIRTY_LOG_PAGE_OFFSET":           KVM_DIRTY_LOG_PAGE_OFFSET,
		"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2":   KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
		"KVM_CAP_DIRTY_LOG_RING":              KVM_CAP_DIRTY_LOG_RING,
		"KVM_CAP_DIRTY_LOG_RING_ACQ_REL":      KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
		"KVM_CAP_XSAVE2":                      KVM_CAP_XSAVE2,
		"KVM_CAP_IMMEDIATE_EXIT":              KVM_CAP_IMMEDIATE_EXIT,
		"KVM_CAP_MAX_VCPUS":                   KVM_CAP_MAX_VCPUS,
		"KVM_CAP_SYNC_REGS":                   KVM_CAP_SYNC_REGS,
		"KVM_SYNC_X86_REGS":                   KVM_SYNC_X86_REGS,
		"KVM_SYNC_X86_SREGS":                  KVM_SYNC_X86_SREGS,
		"KVM_SYNC_X86_EVENTS":                 KVM_SYNC_X86_EVENTS,
		"KVM_CAP_NR_VCPUS":                    KVM_CAP_NR_VCPUS,
		"KVM_CAP_IRQCHIP":                     KVM_CAP_IRQCHIP,
		"KVM_CAP_PIT2":                        KVM_CAP_PIT2,
		"KVM_CAP_SET_GUEST_DEBUG":             KVM_CAP_SET_GUEST_DEBUG,
		"KVM_GUESTDBG_ENABLE":                 KVM_GUESTDBG_ENABLE,
		"KVM_GUESTDBG_SINGLESTEP":             KVM_GUESTDBG_SINGLESTEP,
		"KVM_GUESTDBG_USE_HW_BP":              KVM_GUESTDBG_USE_HW_BP,
		"KVM_GUESTDBG_USE_SW_BP":              KVM_GUESTDBG_USE_SW_BP,
		"KVM_DIRTY_GFN_F_DIRTY":               KVM_DIRTY_GFN_F_DIRTY,
		"KVM_DIRTY_GFN_F_RESET":               KVM_DIRTY_GFN_F_RESET,
		"KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE": KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
		"KVM_DIRTY_LOG_INITIALLY_SET":         KVM_DIRTY_LOG_INITIALLY_SET,
		"KVM_EXIT_IO_IN":                      KVM_EXIT_IO_IN,
		"KVM_EXIT_IO_OUT":                     KVM_EXIT_IO_OUT,
		"KVM_EXIT_SYSTEM_EVENT":               KVM_EXIT_SYSTEM_EVENT,
		"KVM_EXIT_DIRTY_RING_FULL":            KVM_EXIT_DIRTY_RING_FULL,
		"KVM_EXIT_IO":                         uint64(kvm.EXITIO),
		"KVM_EXIT_MMIO":                       uint64(kvm.EXITMMIO),
		"KVM_EXIT_HLT":                        uint64(kvm.EXITHLT),
		"KVM_EXIT_DEBUG":                      uint64(kvm.EXITDEBUG),
		"KVM_EXIT_SHUTDOWN":                   uint64(kvm.EXITSHUTDOWN),
		"KVM_EXIT_IRQ_WINDOW_OPEN":            uint64(kvm.EXITIRQWINDOWOPEN),
		"KVM_EXIT_INTR":                       uint64(kvm.EXITINTR),
		"KVM_EXIT_FAIL_ENTRY":                 uint64(kvm.EXITFAILENTRY),
		"KVM_EXIT_INTERNAL_ERROR":             uint64(kvm.EXITINTERNALERROR),
		"DR_TRAP0":                            DR_TRAP0,
		"DR_STEP":                             DR_STEP,
		"DR_GLOBAL_ENABLE":                    DR_GLOBAL_ENABLE,
		"DR_ENABLE_SIZE":                      DR_ENABLE_SIZE,
		"DR_CONTROL_SHIFT":                    DR_CONTROL_SHIFT,
		"DR_CONTROL_SIZE":                     DR_CONTROL_SIZE,
		"DR_RW_EXECUTE":                       DR_RW_EXECUTE,
		"DR_LEN_1":                            DR_LEN_1,
		"DR_GLOBAL_SLOWDOWN":                  DR_GLOBAL_SLOWDOWN,

		"sizeof kvm_dirty_log":           uint64(unsafe.Sizeof(DirtyLog{})),
		"sizeof kvm_clear_dirty_log":     uint64(unsafe.Sizeof(ClearDirtyLog{})),
		"sizeof kvm_enable_cap":          uint64(unsafe.Sizeof(EnableCap{})),
		"sizeof kvm_xsave":               XSaveSize,
		"sizeof kvm_msr_entry":           uint64(unsafe.Sizeof(MSREntry{})),
		"sizeof kvm_guest_debug":         uint64(unsafe.Sizeof(GuestDebug{})),
		"sizeof kvm_irq_level":           uint64(unsafe.Sizeof(IRQLevel{})),
		"sizeof kvm_interrupt":           uint64(unsafe.Sizeof(InterruptRequest{})),
		"sizeof kvm_debug_exit_arch":     uint64(unsafe.Sizeof(dbg)),
		"sizeof kvm_guest_debug_arch":    uint64(unsafe.Sizeof(gd.DebugReg)),
		"offsetof kvm_guest_debug.arch":  uint64(unsafe.Offsetof(gd.DebugReg)),
		"sizeof kvm_translation":         uint64(unsafe.Sizeof(tr)),
		"offsetof kvm_translation.valid": uint64(unsafe.Offsetof(tr.Valid)),
		"sizeof kvm_dirty_gfn":           uint64(unsafe.Sizeof(DirtyGFN{})),
		// gokvm's structs, which ftckpt passes to the kernel through gokvm.
		"sizeof kvm_regs":                                uint64(unsafe.Sizeof(kvm.Regs{})),
		"sizeof kvm_sregs":                               uint64(unsafe.Sizeof(kvm.Sregs{})),
		"sizeof kvm_lapic_state":                         uint64(unsafe.Sizeof(kvm.LAPICState{})),
		"sizeof kvm_vcpu_events":                         uint64(unsafe.Sizeof(kvm.VCPUEvents{})),
		"sizeof kvm_debugregs":                           uint64(unsafe.Sizeof(kvm.DebugRegs{})),
		"sizeof kvm_xcrs":                                uint64(unsafe.Sizeof(kvm.XCRS{})),
		"sizeof kvm_irqchip":                             uint64(unsafe.Sizeof(kvm.IRQChip{})),
		"sizeof kvm_pit_state2":                          uint64(unsafe.Sizeof(kvm.PITState2{})),
		"sizeof kvm_clock_data":                          uint64(unsafe.Sizeof(kvm.ClockData{})),
		"sizeof kvm_mp_state":                            uint64(unsafe.Sizeof(kvm.MPState{})),
		"sizeof kvm_cpuid_entry2":                        uint64(unsafe.Sizeof(kvm.CPUIDEntry2{})),
		"sizeof kvm_userspace_memory_region":             uint64(unsafe.Sizeof(kvm.UserspaceMemoryRegion{})),
		"offsetof kvm_run.request_interrupt_window":      same(t, RunRequestInterruptWindowOffset, unsafe.Offsetof(run.RequestInterruptWindow)),
		"offsetof kvm_run.immediate_exit":                same(t, RunImmediateExitOffset, unsafe.Offsetof(run.ImmediateExit)),
		"offsetof kvm_run.exit_reason":                   same(t, RunExitReasonOffset, unsafe.Offsetof(run.ExitReason)),
		"offsetof kvm_run.ready_for_interrupt_injection": same(t, RunReadyForInjectionOffset, unsafe.Offsetof(run.ReadyForInterruptInjection)),
		"offsetof kvm_run.if_flag":                       same(t, RunIfFlagOffset, unsafe.Offsetof(run.IfFlag)),
		"offsetof kvm_run.io":                            same(t, RunExitUnionOffset, unsafe.Offsetof(run.Data)),
		"offsetof kvm_run.io.direction":                  union + RunIODirectionOffset,
		"offsetof kvm_run.io.size":                       union + RunIOSizeOffset,
		"offsetof kvm_run.io.port":                       union + RunIOPortOffset,
		"offsetof kvm_run.io.count":                      union + RunIOCountOffset,
		"offsetof kvm_run.io.data_offset":                union + RunIODataOffsetOffset,
		"offsetof kvm_run.mmio.phys_addr":                union + RunMMIOPhysAddrOffset,
		"offsetof kvm_run.mmio.data":                     union + RunMMIODataOffset,
		"offsetof kvm_run.mmio.len":                      union + RunMMIOLenOffset,
		"offsetof kvm_run.mmio.is_write":                 union + RunMMIOIsWriteOffset,
		"offsetof kvm_run.debug.arch.exception":          union + same(t, RunDebugExceptionOffset, unsafe.Offsetof(dbg.Exception)),
		"offsetof kvm_run.debug.arch.pc":                 union + same(t, RunDebugPCOffset, unsafe.Offsetof(dbg.PC)),
		"offsetof kvm_run.debug.arch.dr6":                union + same(t, RunDebugDR6Offset, unsafe.Offsetof(dbg.DR6)),
		"offsetof kvm_run.debug.arch.dr7":                union + same(t, RunDebugDR7Offset, unsafe.Offsetof(dbg.DR7)),
		"offsetof kvm_run.kvm_valid_regs":                RunValidRegsOffset,
		"offsetof kvm_run.s.regs.regs":                   RunSyncRegsOffset,
		"offsetof kvm_run.s.regs.sregs":                  RunSyncSregsOffset,
		"offsetof kvm_run.s.regs.events":                 RunSyncEventsOffset,
		"offsetof kvm_regs.rip":                          uint64(unsafe.Offsetof(regs.RIP)),
		"offsetof kvm_regs.rflags":                       uint64(unsafe.Offsetof(regs.RFLAGS)),
		"offsetof kvm_sregs.cs":                          uint64(unsafe.Offsetof(sregs.CS)),
		"offsetof kvm_segment.l":                         uint64(unsafe.Offsetof(seg.L)),
		"offsetof kvm_sregs.idt":                         uint64(unsafe.Offsetof(sregs.IDT)),
		"offsetof kvm_sregs.efer":                        uint64(unsafe.Offsetof(sregs.EFER)),
		"offsetof kvm_vcpu_events.interrupt.injected":    uint64(unsafe.Offsetof(ev.I)) + uint64(unsafe.Offsetof(ev.I.Inject)),
		"offsetof kvm_vcpu_events.interrupt.nr":          uint64(unsafe.Offsetof(ev.I)) + uint64(unsafe.Offsetof(ev.I.Nr)),
		"offsetof kvm_vcpu_events.exception_payload":     uint64(unsafe.Offsetof(ev.ExceptionPayload)),
	}
	abitest.Check(t, "<linux/kvm.h>", abiProgram, ours)
}

// same checks that a constant offset of ours equals the offset in the
// struct that mirrors the kernel's, and returns it for the header check.
func same(t *testing.T, ours uintptr, field uintptr) uint64 {
	t.Helper()
	if ours != field {
		t.Errorf("offset constant %d, but the Go struct has the field at %d", ours, field)
	}
	return uint64(ours)
}
