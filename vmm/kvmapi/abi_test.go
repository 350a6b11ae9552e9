package kvmapi

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
)

// abiProgram prints, for each name, the kernel's value: ioctl numbers and
// struct sizes from the system's <linux/kvm.h>.
const abiProgram = `
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>
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
	P("KVM_DIRTY_LOG_PAGE_OFFSET", KVM_DIRTY_LOG_PAGE_OFFSET);
	P("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	P("KVM_CAP_DIRTY_LOG_RING", KVM_CAP_DIRTY_LOG_RING);
	P("KVM_CAP_DIRTY_LOG_RING_ACQ_REL", KVM_CAP_DIRTY_LOG_RING_ACQ_REL);
	P("KVM_CAP_XSAVE2", KVM_CAP_XSAVE2);
	P("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT);
	P("KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS);
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
	P("offsetof kvm_run.exit_reason", offsetof(struct kvm_run, exit_reason));
	P("offsetof kvm_run.io", offsetof(struct kvm_run, io));
	P("offsetof kvm_run.mmio.len", offsetof(struct kvm_run, mmio.len));
	P("offsetof kvm_run.mmio.is_write", offsetof(struct kvm_run, mmio.is_write));
	P("offsetof kvm_run.debug.arch.pc", offsetof(struct kvm_run, debug.arch.pc));
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
	return 0;
}
`

// TestABIMatchesKernelHeaders checks every ioctl number, constant and struct
// layout ftckpt uses against the system's <linux/kvm.h>, compiled with gcc.
// It needs no /dev/kvm: it is what keeps the KVM layer honest on machines
// that cannot run a guest.
func TestABIMatchesKernelHeaders(t *testing.T) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is needed to read <linux/kvm.h> (.ci/run installs it): %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "abi.c")
	if err := os.WriteFile(src, []byte(abiProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "abi")
	if out, err := exec.Command(gcc, "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("compiling against <linux/kvm.h> (install linux-libc-dev): %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	kernel := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseUint(line[i+1:], 10, 64)
		if err != nil {
			t.Fatalf("bad line %q", line)
		}
		kernel[line[:i]] = v
	}

	var run kvm.RunData
	var ev kvm.VCPUEvents
	ours := map[string]uint64{
		"KVM_RUN":                             uint64(_KVM_RUN),
		"KVM_SET_IDENTITY_MAP_ADDR":           uint64(_KVM_SET_IDENTITY_MAP_ADDR),
		"KVM_GET_DIRTY_LOG":                   uint64(_KVM_GET_DIRTY_LOG),
		"KVM_CLEAR_DIRTY_LOG":                 uint64(_KVM_CLEAR_DIRTY_LOG),
		"KVM_RESET_DIRTY_RINGS":               uint64(_KVM_RESET_DIRTY_RINGS),
		"KVM_ENABLE_CAP":                      uint64(_KVM_ENABLE_CAP),
		"KVM_GET_XSAVE":                       uint64(_KVM_GET_XSAVE),
		"KVM_SET_XSAVE":                       uint64(_KVM_SET_XSAVE),
		"KVM_GET_XSAVE2":                      uint64(_KVM_GET_XSAVE2),
		"KVM_GET_MSRS":                        uint64(_KVM_GET_MSRS),
		"KVM_SET_MSRS":                        uint64(_KVM_SET_MSRS),
		"KVM_GET_MSR_INDEX_LIST":              uint64(_KVM_GET_MSR_INDEX_LIST),
		"KVM_SET_GUEST_DEBUG":                 uint64(_KVM_SET_GUEST_DEBUG),
		"KVM_IRQ_LINE":                        uint64(_KVM_IRQ_LINE),
		"KVM_DIRTY_LOG_PAGE_OFFSET":           KVM_DIRTY_LOG_PAGE_OFFSET,
		"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2":   KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
		"KVM_CAP_DIRTY_LOG_RING":              KVM_CAP_DIRTY_LOG_RING,
		"KVM_CAP_DIRTY_LOG_RING_ACQ_REL":      KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
		"KVM_CAP_XSAVE2":                      KVM_CAP_XSAVE2,
		"KVM_CAP_IMMEDIATE_EXIT":              KVM_CAP_IMMEDIATE_EXIT,
		"KVM_CAP_MAX_VCPUS":                   KVM_CAP_MAX_VCPUS,
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

		"sizeof kvm_dirty_log":       uint64(unsafe.Sizeof(DirtyLog{})),
		"sizeof kvm_clear_dirty_log": uint64(unsafe.Sizeof(ClearDirtyLog{})),
		"sizeof kvm_enable_cap":      uint64(unsafe.Sizeof(EnableCap{})),
		"sizeof kvm_xsave":           XSaveSize,
		"sizeof kvm_msr_entry":       uint64(unsafe.Sizeof(MSREntry{})),
		"sizeof kvm_guest_debug":     uint64(unsafe.Sizeof(GuestDebug{})),
		"sizeof kvm_irq_level":       uint64(unsafe.Sizeof(IRQLevel{})),
		"sizeof kvm_dirty_gfn":       uint64(unsafe.Sizeof(DirtyGFN{})),
		// gokvm's structs, which ftckpt passes to the kernel through gokvm.
		"sizeof kvm_regs":                            uint64(unsafe.Sizeof(kvm.Regs{})),
		"sizeof kvm_sregs":                           uint64(unsafe.Sizeof(kvm.Sregs{})),
		"sizeof kvm_lapic_state":                     uint64(unsafe.Sizeof(kvm.LAPICState{})),
		"sizeof kvm_vcpu_events":                     uint64(unsafe.Sizeof(kvm.VCPUEvents{})),
		"sizeof kvm_debugregs":                       uint64(unsafe.Sizeof(kvm.DebugRegs{})),
		"sizeof kvm_xcrs":                            uint64(unsafe.Sizeof(kvm.XCRS{})),
		"sizeof kvm_irqchip":                         uint64(unsafe.Sizeof(kvm.IRQChip{})),
		"sizeof kvm_pit_state2":                      uint64(unsafe.Sizeof(kvm.PITState2{})),
		"sizeof kvm_clock_data":                      uint64(unsafe.Sizeof(kvm.ClockData{})),
		"sizeof kvm_mp_state":                        uint64(unsafe.Sizeof(kvm.MPState{})),
		"sizeof kvm_cpuid_entry2":                    uint64(unsafe.Sizeof(kvm.CPUIDEntry2{})),
		"sizeof kvm_userspace_memory_region":         uint64(unsafe.Sizeof(kvm.UserspaceMemoryRegion{})),
		"offsetof kvm_run.exit_reason":               uint64(unsafe.Offsetof(run.ExitReason)),
		"offsetof kvm_run.io":                        uint64(unsafe.Offsetof(run.Data)),
		"offsetof kvm_run.mmio.len":                  uint64(unsafe.Offsetof(run.Data)) + RunMMIOLenOffset,
		"offsetof kvm_run.mmio.is_write":             uint64(unsafe.Offsetof(run.Data)) + RunMMIOIsWriteOffset,
		"offsetof kvm_run.debug.arch.pc":             uint64(unsafe.Offsetof(run.Data)) + RunDebugPCOffset,
		"offsetof kvm_vcpu_events.exception_payload": uint64(unsafe.Offsetof(ev.ExceptionPayload)),
	}
	for name, want := range kernel {
		got, ok := ours[name]
		if !ok {
			t.Errorf("%s: the C program prints it but the test does not check it", name)
			continue
		}
		if got != want {
			t.Errorf("%s = %#x here, %#x in <linux/kvm.h>", name, got, want)
		}
	}
	if len(ours) != len(kernel) {
		t.Errorf("checked %d names, the C program printed %d", len(ours), len(kernel))
	}
}
