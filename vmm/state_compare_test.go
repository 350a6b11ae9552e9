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

// TestStateDiffLeavesOutXSTATEBV: two vCPU states whose XSAVE areas differ
// only in XSTATE_BV are the same state (KVM writes a component whose bit is
// clear in its initial state); any other byte of the area is a difference.
func TestStateDiffLeavesOutXSTATEBV(t *testing.T) {
	state := func(at int, b byte) []byte {
		t.Helper()
		st := &vcpuState{XSave: make([]byte, kvmapi.XSaveSize)}
		st.XSave[at] = b
		data, err := encodeVCPUState(st)
		if err != nil {
			t.Fatal(err)
		}
		enc, err := EncodeState(&MachineState{Config: StateConfig{VCPUs: 1}, Sections: map[string]Section{"vcpu/0": {Version: 1, Data: data}}})
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	const xstateBV = 512
	if d, err := StateDiff(state(xstateBV, 2), state(xstateBV, 0)); d != "" || err != nil {
		t.Fatalf("states differing in XSTATE_BV alone: %q, %v", d, err)
	}
	if d, err := StateDiff(state(600, 2), state(600, 0)); d != "vcpu/0 (XSave from byte 600)" || err != nil {
		t.Fatalf("states differing in an XSAVE component: %q, %v; want vcpu/0's XSave named", d, err)
	}
}
