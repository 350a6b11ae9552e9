package vmm

import (
	"fmt"

	"github.com/bobuhiro11/gokvm/kvm"
)

// maxCPUIDEntries bounds the CPUID table asked of KVM and saved per vCPU.
const maxCPUIDEntries = 256

// supportedCPUID returns KVM_GET_SUPPORTED_CPUID. Every vCPU gets it (with its
// own APIC id): without a CPUID the in-kernel LAPIC drops the timer's
// periodic mode, among other things.
func supportedCPUID(kvmFd int) (*kvm.CPUID, error) {
	c := &kvm.CPUID{Nent: maxCPUIDEntries, Entries: make([]kvm.CPUIDEntry2, maxCPUIDEntries)}
	if err := kvm.GetSupportedCPUID(uintptr(kvmFd), c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	if c.Nent > maxCPUIDEntries {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %d entries, more than %d", c.Nent, maxCPUIDEntries)
	}
	c.Entries = c.Entries[:c.Nent]
	return c, nil
}

// vcpuCPUID copies the CPUID table with vCPU index's APIC id filled in.
func vcpuCPUID(c *kvm.CPUID, index int) *kvm.CPUID {
	out := &kvm.CPUID{Nent: c.Nent, Entries: append([]kvm.CPUIDEntry2(nil), c.Entries...)}
	for i := range out.Entries {
		e := &out.Entries[i]
		switch e.Function {
		case 1:
			// EBX[31:24]: initial APIC id.
			e.Ebx = e.Ebx&0x00ffffff | uint32(index)<<24
		case 0xb, 0x1f:
			// EDX: x2APIC id.
			e.Edx = uint32(index)
		}
	}
	return out
}
