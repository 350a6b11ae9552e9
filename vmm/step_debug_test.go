package vmm

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// TestDR7ExecBreakpoint checks the encoding against the layout of DR7 in
// the Intel SDM (17.2.4): G<n> is bit 2n+1, R/W<n> bits 16+4n..17+4n, LEN<n>
// bits 18+4n..19+4n, GE bit 9, bit 10 reserved as 1.
func TestDR7ExecBreakpoint(t *testing.T) {
	for slot := 0; slot < 4; slot++ {
		v := dr7ExecBreakpoint(slot)
		if v&(1<<10) == 0 || v&(1<<9) == 0 {
			t.Errorf("slot %d: DR7 %#x lacks bit 10 or GE", slot, v)
		}
		for n := 0; n < 4; n++ {
			local, global := v>>(2*n)&1, v>>(2*n+1)&1
			if local != 0 || global != boolBit(n == slot) {
				t.Errorf("slot %d: DR7 %#x enables L%d=%d G%d=%d", slot, v, n, local, n, global)
			}
			if cond := v >> (16 + 4*n) & 0xf; cond != 0 {
				t.Errorf("slot %d: DR7 %#x has R/W%d,LEN%d = %#x, want execute/1 byte (0)", slot, v, n, n, cond)
			}
		}
		if rest := v &^ (0xff | 1<<9 | 1<<10 | 0xffff0000); rest != 0 {
			t.Errorf("slot %d: DR7 %#x sets other bits %#x", slot, v, rest)
		}
	}
	if got := dr7ExecBreakpoint(0); got != 0x602 { // what QEMU's gdbstub sets for one execute breakpoint
		t.Errorf("slot 0: %#x, want 0x602", got)
	}
	defer func() {
		if recover() == nil {
			t.Error("slot 4 did not panic")
		}
	}()
	dr7ExecBreakpoint(4)
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func TestGuestDebugControl(t *testing.T) {
	ctl, regs := guestDebug(Debug{Break: true, BreakRIP: 0x100010}, 0x7000100010)
	if ctl != kvmapi.KVM_GUESTDBG_ENABLE|kvmapi.KVM_GUESTDBG_USE_HW_BP || regs[0] != 0x7000100010 || regs[7] != dr7ExecBreakpoint(0) {
		t.Errorf("breakpoint: control %#x regs %#x", ctl, regs)
	}
	for i := 1; i < 7; i++ {
		if regs[i] != 0 {
			t.Errorf("breakpoint: debugreg[%d] = %#x", i, regs[i])
		}
	}
	if ctl, regs := guestDebug(Debug{SingleStep: true}, 0); ctl != kvmapi.KVM_GUESTDBG_ENABLE|kvmapi.KVM_GUESTDBG_SINGLESTEP || regs != [8]uint64{} {
		t.Errorf("single step: control %#x regs %#x", ctl, regs)
	}
	if ctl, regs := guestDebug(Debug{}, 0); ctl != 0 || regs != [8]uint64{} {
		t.Errorf("none: control %#x regs %#x", ctl, regs)
	}
}

func TestHaltsNext(t *testing.T) {
	for _, c := range []struct {
		code [2]byte
		want bool
	}{
		{[2]byte{opHLT, 0x90}, true},
		{[2]byte{opSTI, opHLT}, true}, // one step on some KVMs (the STI's shadow), two on others
		{[2]byte{opSTI, 0x90}, false},
		{[2]byte{0xeb, opHLT}, false}, // a jump whose offset byte is 0xf4
		{[2]byte{0x90, opHLT}, false}, // the HLT is the next instruction's
		{[2]byte{0xe6, opHLT}, false}, // out %al,$0xf4
	} {
		if got := haltsNext(c.code); got != c.want {
			t.Errorf("code % x: %v, want %v", c.code, got, c.want)
		}
	}
}

func gate(offset uint64, typeAttr byte) [16]byte {
	var g [16]byte
	le := binary.LittleEndian
	le.PutUint16(g[0:], uint16(offset))
	le.PutUint16(g[2:], selCode)
	g[5] = typeAttr
	le.PutUint16(g[6:], uint16(offset>>16))
	le.PutUint32(g[8:], uint32(offset>>32))
	return g
}

func TestIDTGateOffset(t *testing.T) {
	for _, off := range []uint64{0x100234, 0xffffffff81234567, 0, 0x12345678_9abcdef0} {
		for _, typ := range []byte{0x8e, 0x8f, 0xee} { // interrupt gate, trap gate, DPL 3
			got, err := idtGateOffset(gate(off, typ))
			if err != nil || got != off {
				t.Errorf("offset %#x type %#x: %#x, %v", off, typ, got, err)
			}
		}
	}
	for _, typ := range []byte{0x0e, 0x85, 0x8c, 0} { // not present, task gate, call gate, empty
		if _, err := idtGateOffset(gate(0x1000, typ)); err == nil || !strings.Contains(err.Error(), "not a present interrupt or trap gate") {
			t.Errorf("type %#x: %v", typ, err)
		}
	}
}
