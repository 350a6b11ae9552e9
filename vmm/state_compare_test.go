package vmm

import (
	"testing"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// TestVCPUPartsNameWhatDiffers: StateDiff names the parts of a vCPU's
// state that differ, so that a failing comparison says where to look.
func TestVCPUPartsNameWhatDiffers(t *testing.T) {
	section := func(st *vcpuState) Section {
		t.Helper()
		data, err := encodeVCPUState(st)
		if err != nil {
			t.Fatal(err)
		}
		return Section{Version: 1, Data: data}
	}
	a := &vcpuState{MSRs: []kvmapi.MSREntry{{Index: 0x10b, Data: 1}, {Index: 0xc0000080, Data: 0x500}}, XSave: make([]byte, kvmapi.XSaveSize)}
	b := &vcpuState{MSRs: []kvmapi.MSREntry{{Index: 0x10b, Data: 1}, {Index: 0xc0000080, Data: 0x501}}, XSave: make([]byte, kvmapi.XSaveSize)}
	b.Regs.RIP = 0x1000
	if got, want := vcpuParts("vcpu/0", section(a), section(b)), " (Regs, MSR 0xc0000080)"; got != want {
		t.Fatalf("vcpuParts = %q, want %q", got, want)
	}
	if got := vcpuParts("vm", section(a), section(b)); got != "" {
		t.Fatalf("vcpuParts of a VM section = %q, want none", got)
	}
}
