package vmm

import (
	"bytes"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
)

// StateDiff compares two machine states from SaveState section by
// section, leaving out what moves with host time while a machine is paused
// or not yet started: the KVM clock, the in-kernel PIT's load times, the
// guest clock, each vCPU's TSC and LAPIC timer count; and each vCPU's
// XSTATE_BV, which is not state (see timelessSections). It returns "" if the
// states describe the same machine at the same point, and otherwise names
// what differs (the configuration, or the IDs of the sections, with the
// parts of a vCPU's state that differ: see vcpuParts). A state
// that does not decode is an error.
func StateDiff(a, b []byte) (string, error) {
	x, err := timelessSections(a)
	if err != nil {
		return "", fmt.Errorf("the first state: %w", err)
	}
	y, err := timelessSections(b)
	if err != nil {
		return "", fmt.Errorf("the second state: %w", err)
	}
	var diff []string
	if x.cfg != y.cfg {
		diff = append(diff, fmt.Sprintf("configuration %+v and %+v", x.cfg, y.cfg))
	}
	ids := slices.Sorted(maps.Keys(x.sections))
	for id := range y.sections {
		if _, ok := x.sections[id]; !ok {
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		s, t := x.sections[id], y.sections[id]
		if s.Version != t.Version || !bytes.Equal(s.Data, t.Data) {
			diff = append(diff, id+vcpuParts(id, s, t))
		}
	}
	return strings.Join(diff, ", "), nil
}

// vcpuParts names, for the vCPU sections s and t of id that differ, the
// parts of their state that do (" (Regs, MSR 0x10)"), or "" for a section
// of another kind or one that does not decode.
func vcpuParts(id string, s, t Section) string {
	if !strings.HasPrefix(id, "vcpu/") || s.Version != t.Version {
		return ""
	}
	a, err := decodeVCPUState(s.Data)
	if err != nil {
		return ""
	}
	b, err := decodeVCPUState(t.Data)
	if err != nil {
		return ""
	}
	var parts []string
	x, y := reflect.ValueOf(a.vcpuStateFixed), reflect.ValueOf(b.vcpuStateFixed)
	for i := range x.NumField() {
		if !reflect.DeepEqual(x.Field(i).Interface(), y.Field(i).Interface()) {
			parts = append(parts, x.Type().Field(i).Name)
		}
	}
	if len(a.MSRs) != len(b.MSRs) {
		parts = append(parts, "MSRs")
	} else {
		for j := range a.MSRs {
			if a.MSRs[j] != b.MSRs[j] {
				parts = append(parts, fmt.Sprintf("MSR %#x", a.MSRs[j].Index))
			}
		}
	}
	if !reflect.DeepEqual(a.CPUID, b.CPUID) {
		parts = append(parts, "CPUID")
	}
	if !bytes.Equal(a.XSave, b.XSave) {
		i := 0
		for i < min(len(a.XSave), len(b.XSave)) && a.XSave[i] == b.XSave[i] {
			i++
		}
		parts = append(parts, fmt.Sprintf("XSave from byte %d", i))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

type timelessState struct {
	cfg      StateConfig
	sections map[string]Section
}

// timelessSections decodes a machine state and clears, in its sections,
// what StateDiff leaves out.
func timelessSections(state []byte) (timelessState, error) {
	ms, err := DecodeState(state)
	if err != nil {
		return timelessState{}, err
	}
	out := timelessState{cfg: ms.Config, sections: make(map[string]Section, len(ms.Sections))}
	for id, s := range ms.Sections {
		data := s.Data
		switch {
		case id == "vm":
			var st vmState
			if err := decodePlain(data, &st); err != nil {
				return timelessState{}, fmt.Errorf("vm: %w", err)
			}
			st.Clock = vmState{}.Clock
			for i := range st.PIT.Channels {
				st.PIT.Channels[i].CountLoadTime = 0
			}
			data = appendVMState(nil, &st)
		case id == "clock":
			var st clockState
			if err := decodePlain(data, &st); err != nil {
				return timelessState{}, fmt.Errorf("clock: %w", err)
			}
			st.Now = 0
			if data, err = encodePlain(&st); err != nil {
				return timelessState{}, err
			}
		case strings.HasPrefix(id, "vcpu/"):
			st, err := decodeVCPUState(data)
			if err != nil {
				return timelessState{}, fmt.Errorf("%s: %w", id, err)
			}
			for j := range st.MSRs {
				if st.MSRs[j].Index == 0x10 { // IA32_TIME_STAMP_COUNTER
					st.MSRs[j].Data = 0
				}
			}
			const apicTMCCT = 0x390 // the timer's current count
			clear(st.LAPIC.Regs[apicTMCCT : apicTMCCT+4])
			// XSTATE_BV says which components the CPU tracked as in use, not
			// their values: KVM_GET_XSAVE writes a component whose bit is
			// clear in its initial state, so a bit set over initial values
			// is the same state. A vCPU restored from a state with the SSE
			// bit set over initial values saved it clear, now and then.
			const xstateBV = 512
			if len(st.XSave) >= xstateBV+8 {
				clear(st.XSave[xstateBV : xstateBV+8])
			}
			if data, err = encodeVCPUState(st); err != nil {
				return timelessState{}, err
			}
		}
		out.sections[id] = Section{Version: s.Version, Data: data}
	}
	return out, nil
}
