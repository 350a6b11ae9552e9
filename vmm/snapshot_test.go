package vmm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

func testMachineState() *MachineState {
	return &MachineState{
		Config: StateConfig{VCPUs: 2, IRQChip: true, MemSize: 16 << 20},
		Sections: map[string]Section{
			"vm":          {Version: 1, Data: bytes.Repeat([]byte{7}, 1000)},
			"vcpu/0":      {Version: 1, Data: []byte("regs")},
			"serial/com1": {Version: 1},
		},
	}
}

func testState(t testing.TB) []byte {
	b, err := EncodeState(testMachineState())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testStateIn encodes the test state with its sections in the order ids
// gives, which may name one twice or leave one out.
func testStateIn(t testing.TB, ids ...string) []byte {
	b, err := encodeState(testMachineState(), ids)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sealed returns data with its last 4 bytes replaced by the checksum of the
// rest, as a state's encoder would write it.
func sealed(data []byte) []byte {
	if len(data) < 4 {
		return data
	}
	b := append([]byte(nil), data...)
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.Checksum(b[:len(b)-4], castagnoli))
	return b
}

// sectionIDs lists the IDs of an encoded state's sections in their order.
// Precondition: DecodeState accepts data.
func sectionIDs(data []byte) []string {
	var ids []string
	d := decoder{buf: data[stateHeaderBytes : len(data)-4]}
	for len(d.buf) > 0 {
		ids = append(ids, string(d.bytes(int(d.u16()))))
		d.u32()
		d.bytes(int(d.u32()))
	}
	return ids
}

// testSnapshot writes a snapshot of synthetic state and of memory with a few
// pages touched, and returns it with the memory's hash.
func testSnapshot(t *testing.T) ([]byte, [32]byte) {
	mem, err := NewGuestMemory(16 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 20; i++ {
		page := make([]byte, PageSize)
		rng.Read(page[:64])
		mem.WritePage(uint64(rng.Intn(int(mem.Pages()))), page)
	}
	mem.WritePage(5, make([]byte, PageSize)) // touched but zero: not stored
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, testState(t), mem); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), sha256.Sum256(mem.Bytes())
}

func readInto(snap []byte) ([]byte, *GuestMemory, error) {
	var mem *GuestMemory
	state, err := readSnapshot(bytes.NewReader(snap), func(sc StateConfig) (*GuestMemory, error) {
		var err error
		mem, err = NewGuestMemory(sc.MemSize)
		return mem, err
	})
	return state, mem, err
}

func TestSnapshotRoundTrip(t *testing.T) {
	snap, want := testSnapshot(t)
	state, mem, err := readInto(snap)
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	if got := sha256.Sum256(mem.Bytes()); got != want {
		t.Error("memory differs after a snapshot round trip")
	}
	if !bytes.Equal(state, testState(t)) {
		t.Error("state differs after a snapshot round trip")
	}
	if len(snap) > 24+len(state)+21*(8+PageSize)+8+12 {
		t.Errorf("snapshot of %d bytes stores more than the 20 non-zero pages", len(snap))
	}
}

func TestSnapshotRejectsDamage(t *testing.T) {
	snap, _ := testSnapshot(t)
	future := append([]byte(nil), snap...)
	future[8] = 99
	wrongMagic := append([]byte(nil), snap...)
	copy(wrongMagic, "NOTASNAP")
	flagged := append([]byte(nil), snap...)
	flagged[12] = 1
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"wrong magic", wrongMagic, ErrBadMagic},
		{"future version", future, ErrVersion},
		{"a flag this build does not know", flagged, ErrMismatch},
		{"empty", nil, ErrTruncated},
	}
	for _, cut := range []int{10, 30, 24 + 100, len(snap) / 2, len(snap) - 13, len(snap) - 1} {
		cases = append(cases, struct {
			name string
			data []byte
			want error
		}{"truncated", snap[:cut], ErrTruncated})
	}
	for _, c := range cases {
		_, mem, err := readInto(c.data)
		if mem != nil {
			mem.Close()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s (%d bytes): %v, want %v", c.name, len(c.data), err, c.want)
		}
	}
	// Every single-bit flip after the magic and version is caught by some
	// check; none is accepted.
	rng := rand.New(rand.NewSource(2))
	for i := 0; i < 400; i++ {
		pos := 12 + rng.Intn(len(snap)-12)
		bad := append([]byte(nil), snap...)
		bad[pos] ^= 1 << rng.Intn(8)
		_, mem, err := readInto(bad)
		if mem != nil {
			mem.Close()
		}
		if err == nil {
			t.Fatalf("bit flip at byte %d of %d accepted", pos, len(snap))
		}
	}
}

func TestDecodeStateRejectsDamage(t *testing.T) {
	good := testState(t)
	if _, err := DecodeState(good); err != nil {
		t.Fatal(err)
	}
	for cut := 0; cut < len(good); cut += 7 {
		if _, err := DecodeState(good[:cut]); err == nil {
			t.Errorf("state cut to %d bytes accepted", cut)
		}
	}
	for pos := 12; pos < len(good); pos++ {
		bad := append([]byte(nil), good...)
		bad[pos] ^= 0x10
		if _, err := DecodeState(bad); !errors.Is(err, ErrChecksum) {
			t.Errorf("flip at %d: %v, want ErrChecksum", pos, err)
		}
	}
}

// TestStateSectionsByID: sections come in any order and decode to the same
// state; the encoding writes them in ID order; an ID twice, an empty or
// overlong ID and a version 1 state are refused, naming what is wrong.
func TestStateSectionsByID(t *testing.T) {
	want := testMachineState()
	canonical := testState(t)
	if got := sectionIDs(canonical); !slices.IsSorted(got) || len(got) != 3 {
		t.Errorf("EncodeState wrote sections %q, want them in ID order", got)
	}
	for _, order := range [][]string{{"vm", "vcpu/0", "serial/com1"}, {"vcpu/0", "serial/com1", "vm"}} {
		ms, err := DecodeState(testStateIn(t, order...))
		if err != nil {
			t.Fatalf("sections %q: %v", order, err)
		}
		if !reflect.DeepEqual(ms, decodeOrFail(t, canonical)) || len(ms.Sections) != len(want.Sections) {
			t.Errorf("sections %q decode to %+v", order, ms)
		}
		if again, _ := EncodeState(ms); !bytes.Equal(again, canonical) {
			t.Errorf("sections %q re-encode differently", order)
		}
	}
	twice := testStateIn(t, "vm", "vcpu/0", "serial/com1", "vcpu/0")
	if _, err := DecodeState(twice); !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), `"vcpu/0" appears twice`) {
		t.Errorf("a section twice: %v, want ErrMismatch naming vcpu/0", err)
	}
	for _, id := range []string{"", strings.Repeat("x", maxComponentID+1)} {
		ms := testMachineState()
		ms.Sections[id] = Section{Version: 1}
		if _, err := EncodeState(ms); err == nil {
			t.Errorf("EncodeState took an ID of %d bytes", len(id))
		}
		// Written by hand: idlen, id, version, len.
		b := append([]byte(nil), canonical[:len(canonical)-4]...)
		binary.LittleEndian.PutUint32(b[stateHeaderBytes-4:], 4)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(id)))
		b = append(b, id...)
		b = binary.LittleEndian.AppendUint32(b, 1)
		b = binary.LittleEndian.AppendUint32(b, 0)
		if _, err := DecodeState(sealed(append(b, 0, 0, 0, 0))); !errors.Is(err, ErrMismatch) {
			t.Errorf("an ID of %d bytes: %v, want ErrMismatch", len(id), err)
		}
	}
	v1 := append([]byte(nil), canonical...)
	binary.LittleEndian.PutUint32(v1[8:], 1)
	if _, err := DecodeState(sealed(v1)); !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), "version 1") {
		t.Errorf("a version 1 state: %v, want ErrVersion naming version 1", err)
	}
	// Fields with one encoding only, so that a decoded state re-encodes
	// to itself (FuzzDecodeState found both).
	flagged := append([]byte(nil), canonical...)
	binary.LittleEndian.PutUint32(flagged[12:], 1)
	if _, err := DecodeState(sealed(flagged)); !errors.Is(err, ErrMismatch) {
		t.Errorf("a state with a flag set: %v, want ErrMismatch", err)
	}
	irqchip := append([]byte(nil), canonical...)
	binary.LittleEndian.PutUint32(irqchip[20:], 2)
	if _, err := DecodeState(sealed(irqchip)); !errors.Is(err, ErrMismatch) {
		t.Errorf("a state whose irqchip flag is 2: %v, want ErrMismatch", err)
	}
}

func decodeOrFail(t *testing.T, data []byte) *MachineState {
	t.Helper()
	ms, err := DecodeState(data)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// FuzzDecodeState: whatever DecodeState accepts re-encodes to a state of the
// same size that decodes to the same thing, byte for byte the same if its
// sections were in ID order. Nearly every mutation breaks the checksum, so
// each input is also tried sealed with a valid one: the fuzzer reaches the
// sections behind it.
func FuzzDecodeState(f *testing.F) {
	f.Add(testState(f))
	f.Add(testStateIn(f, "vm", "vcpu/0", "serial/com1"))
	f.Add(testStateIn(f, "vm", "vcpu/0", "serial/com1", "vm"))
	f.Add(testStateIn(f, "vm"))
	f.Add([]byte(stateMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, in := range [][]byte{data, sealed(data)} {
			ms, err := DecodeState(in)
			if err != nil {
				continue
			}
			again, err := EncodeState(ms)
			if err != nil {
				t.Fatalf("decoded state does not re-encode: %v", err)
			}
			if len(again) != len(in) {
				t.Fatalf("re-encoded in %d bytes, decoded from %d: a section was lost or added", len(again), len(in))
			}
			ms2, err := DecodeState(again)
			if err != nil || !reflect.DeepEqual(ms, ms2) {
				t.Fatalf("re-encoded state decodes differently (%v)", err)
			}
			if slices.IsSorted(sectionIDs(in)) && !bytes.Equal(again, in) {
				t.Fatalf("a state in ID order does not re-encode to itself")
			}
		}
	})
}

// fakeComponent is a Component with only an ID.
type fakeComponent struct{ id string }

func (c *fakeComponent) ID() string                        { return c.id }
func (c *fakeComponent) StateVersion() uint32              { return 1 }
func (c *fakeComponent) SaveState() ([]byte, error)        { return []byte(c.id), nil }
func (c *fakeComponent) RestoreState(uint32, []byte) error { return nil }

// TestMatchSectionsByID: each component finds its own section wherever it
// is; a missing section, an unclaimed one and an ID two components share
// are refused with every ID at fault named.
func TestMatchSectionsByID(t *testing.T) {
	comps := func(ids ...string) []Component {
		var cs []Component
		for _, id := range ids {
			cs = append(cs, &fakeComponent{id: id})
		}
		return cs
	}
	sections := func(ids ...string) map[string]Section {
		m := map[string]Section{}
		for _, id := range ids {
			m[id] = Section{Version: 1, Data: []byte(id)}
		}
		return m
	}
	got, err := matchSections(comps("vm", "vcpu/0", "serial/com1"), sections("serial/com1", "vm", "vcpu/0"))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"vm", "vcpu/0", "serial/com1"} {
		if string(got[i].Data) != want {
			t.Errorf("component %d (%s) got section %q", i, want, got[i].Data)
		}
	}
	for _, c := range []struct {
		name       string
		comps      []Component
		sections   map[string]Section
		wantInText []string
	}{
		{"missing", comps("vm", "vcpu/0", "vcpu/1"), sections("vm", "vcpu/0"), []string{`no section for "vcpu/1"`}},
		{"unclaimed", comps("vm"), sections("vm", "virtio-net/0", "pci/0"), []string{`no component of this machine is "pci/0", "virtio-net/0"`}},
		{"shared", comps("vm", "serial/com1", "serial/com1"), sections("vm", "serial/com1"), []string{`more than one component "serial/com1"`}},
		{"missing and unclaimed", comps("vm", "clock"), sections("vm", "clack"), []string{`no section for "clock"`, `no component of this machine is "clack"`}},
	} {
		_, err := matchSections(c.comps, c.sections)
		if !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: %v, want ErrMismatch", c.name, err)
			continue
		}
		for _, want := range c.wantInText {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", c.name, err, want)
			}
		}
	}
}

func TestVCPUStateEncodingRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	st := &vcpuState{
		vcpuStateFixed: vcpuStateFixed{Flags: vcpuFlagLAPIC, MPState: kvm.MPState{State: 3}},
		MSRs:           []kvmapi.MSREntry{{Index: 0x10, Data: 12345}, {Index: 0xc0000082, Data: 0xffff800000001000}},
		CPUID:          []kvm.CPUIDEntry2{{Function: 1, Ebx: 0x01000800}},
		XSave:          make([]byte, kvmapi.XSaveSize),
	}
	st.Regs.RIP = 0x100123
	st.Sregs.CR3 = PML4GPA
	rng.Read(st.LAPIC.Regs[:])
	rng.Read(st.XSave)
	st.Events.ExceptionPayload = 77
	b, err := encodeVCPUState(st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeVCPUState(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := encodeVCPUState(got)
	if !bytes.Equal(b, b2) || got.Regs.RIP != st.Regs.RIP || got.LAPIC != st.LAPIC || got.Events.ExceptionPayload != 77 {
		t.Error("vCPU state changed in a round trip")
	}
	for _, cut := range []int{0, 100, len(b) - 1} {
		if _, err := decodeVCPUState(b[:cut]); !errors.Is(err, ErrTruncated) {
			t.Errorf("cut to %d: %v, want ErrTruncated", cut, err)
		}
	}
	huge := append([]byte(nil), b...)
	huge[4] = 0xff // NMSRs
	if _, err := decodeVCPUState(huge); err == nil {
		t.Error("absurd MSR count accepted")
	}
}

// roundTrip saves c, restores into fresh, saves fresh, and compares.
func roundTrip(t *testing.T, c, fresh Component) {
	t.Helper()
	a, err := c.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.RestoreState(c.StateVersion(), a); err != nil {
		t.Fatal(err)
	}
	b, err := fresh.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("%s: state changed in a round trip:\n% x\n% x", c.ID(), a, b)
	}
	if err := fresh.RestoreState(c.StateVersion()+1, a); !errors.Is(err, ErrVersion) {
		t.Errorf("%s: future version: %v, want ErrVersion", c.ID(), err)
	}
	if len(a) > 0 {
		if err := fresh.RestoreState(c.StateVersion(), a[:len(a)-1]); !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: truncated state: %v, want ErrTruncated", c.ID(), err)
		}
	}
}

func TestSerialStateRoundTrip(t *testing.T) {
	var out bytes.Buffer
	s := NewSerial("com1", PortCOM1, &out, nil)
	s.PIOWrite(PortCOM1+uartLCR, []byte{0x83})
	s.PIOWrite(PortCOM1+uartRBR, []byte{1}) // divisor low
	s.PIOWrite(PortCOM1+uartLCR, []byte{0x03})
	s.PIOWrite(PortCOM1+uartIER, []byte{uartIERTHRI})
	s.PIOWrite(PortCOM1+uartMCR, []byte{uartMCRLoop | 0x0b})
	s.PIOWrite(PortCOM1+uartRBR, []byte{'x'}) // looped back, not printed
	roundTrip(t, s, NewSerial("com1", PortCOM1, nil, nil))
	if out.Len() != 0 {
		t.Errorf("loopback byte reached the console: %q", out.String())
	}
	d := []byte{0}
	s.PIORead(PortCOM1+uartLSR, d)
	if d[0]&uartLSRDR == 0 {
		t.Error("looped-back byte not reported as received")
	}
	s.PIORead(PortCOM1+uartRBR, d)
	if d[0] != 'x' {
		t.Errorf("received %q, want x", d[0])
	}
	s.PIORead(PortCOM1+uartMSR, d)
	if d[0] != 0xb0 { // DTR→DSR, RTS→CTS, OUT2→DCD
		t.Errorf("loopback MSR = %#x, want 0xb0", d[0])
	}
	s.PIOWrite(PortCOM1+uartMCR, []byte{0})
	s.PIOWrite(PortCOM1+uartRBR, []byte{'y'})
	if out.String() != "y" {
		t.Errorf("console got %q, want y", out.String())
	}
}

func TestClockContinuesAcrossRestore(t *testing.T) {
	host := time.Duration(0)
	c := NewClock(func() time.Duration { return host })
	host = 5 * time.Second
	read := func(c *Clock) uint64 {
		lo, hi := make([]byte, 4), make([]byte, 4)
		c.PIORead(PortClockLo, lo)
		c.PIORead(PortClockHi, hi)
		return uint64(lo[0]) | uint64(lo[1])<<8 | uint64(lo[2])<<16 | uint64(lo[3])<<24 | uint64(hi[0])<<32 | uint64(hi[1])<<40 | uint64(hi[2])<<48 | uint64(hi[3])<<56
	}
	if got := read(c); got != uint64(5*time.Second) {
		t.Fatalf("clock reads %d", got)
	}
	saved, _ := c.SaveState()
	// The new host's clock is far behind: guest time must still continue.
	otherHost := time.Duration(1)
	r := NewClock(func() time.Duration { return otherHost })
	if err := r.RestoreState(1, saved); err != nil {
		t.Fatal(err)
	}
	otherHost += time.Millisecond
	if got := read(r); got != uint64(5*time.Second+time.Millisecond) {
		t.Errorf("restored clock reads %d, want %d", got, 5*time.Second+time.Millisecond)
	}
	roundTrip(t, c, NewClock(func() time.Duration { return 42 }))
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{VCPUs: 0, MemSize: 16 << 20, IRQChip: true},
		{VCPUs: 1000, MemSize: 16 << 20, IRQChip: true},
		{VCPUs: 2, MemSize: 16 << 20, IRQChip: false},
		{VCPUs: 1, MemSize: 1 << 20, IRQChip: true},
		{VCPUs: 1, MemSize: 16 << 20, IRQChip: true, DirtyRingEntries: 1000},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	ok := Config{VCPUs: 64, MemSize: 64 << 30, IRQChip: true, DirtyRingEntries: 4096}
	if err := ok.Validate(); err != nil {
		t.Errorf("%+v refused: %v", ok, err)
	}
}
