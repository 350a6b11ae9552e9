package vmm

import (
	"bytes"
	"encoding/binary"
	"math/rand"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// randomPlain fills *v (plain data) from r through binary.Read, which leaves
// blank fields zero, as KVM leaves reserved fields.
func randomPlain(t *testing.T, r *rand.Rand, v any) {
	t.Helper()
	b := make([]byte, binary.Size(v))
	r.Read(b)
	if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, v); err != nil {
		t.Fatal(err)
	}
}

// TestStateEncodingIsBinaryWrite: the encoders built from memory images
// write what encoding/binary wrote before them, byte for byte, so state
// version 1 is unchanged and older states decode as before.
func TestStateEncodingIsBinaryWrite(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for i := 0; i < 50; i++ {
		st := &vcpuState{}
		randomPlain(t, r, &st.vcpuStateFixed)
		st.MSRs = make([]kvmapi.MSREntry, r.Intn(maxSavedMSRs+1))
		st.CPUID = make([]kvm.CPUIDEntry2, r.Intn(80))
		st.XSave = make([]byte, kvmapi.XSaveSize)
		randomPlain(t, r, st.MSRs)
		randomPlain(t, r, st.CPUID)
		r.Read(st.XSave)
		st.NMSRs, st.NCPUID, st.XSaveLen = uint32(len(st.MSRs)), uint32(len(st.CPUID)), uint32(len(st.XSave))
		var want bytes.Buffer
		for _, part := range []any{&st.vcpuStateFixed, st.MSRs, st.CPUID, st.XSave} {
			if err := binary.Write(&want, binary.LittleEndian, part); err != nil {
				t.Fatal(err)
			}
		}
		got, err := encodeVCPUState(st)
		if err != nil || !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("case %d: the vCPU state encodes to %d bytes (%v), binary.Write to %d, and they differ", i, len(got), err, want.Len())
		}
		back, err := decodeVCPUState(got)
		if err != nil {
			t.Fatal(err)
		}
		again, _ := encodeVCPUState(back)
		if !bytes.Equal(again, got) {
			t.Fatalf("case %d: decode and encode again changed the vCPU state", i)
		}

		var vs vmState
		randomPlain(t, r, &vs)
		want.Reset()
		if err := binary.Write(&want, binary.LittleEndian, &vs); err != nil {
			t.Fatal(err)
		}
		if got := appendVMState(nil, &vs); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("case %d: the VM state encodes to %d bytes, binary.Write to %d, and they differ", i, len(got), want.Len())
		}
	}
}

// TestCheckPackedRefusesPadding: a struct whose memory image is not its
// encoding cannot be encoded by its image.
func TestCheckPackedRefusesPadding(t *testing.T) {
	type padded struct {
		A uint32
		B uint64
	}
	if err := checkPacked([]any{padded{}}); err == nil {
		t.Fatal("a struct with padding passed checkPacked")
	}
	if err := checkPacked(packedTypes); err != nil {
		t.Fatal(err)
	}
}

// TestEncodePlainIsBinaryWrite: device states encode as binary.Write
// encodes them, by their memory image where they have no padding.
func TestEncodePlainIsBinaryWrite(t *testing.T) {
	r := rand.New(rand.NewSource(8))
	type padded struct {
		A uint8
		B uint32
		_ [3]uint8
	}
	type packed struct {
		A uint8
		_ [3]uint8
		B [2]uint32
		C bool
		D [3]int16
	}
	for _, v := range []any{&serialState{}, &pitState{}, &picState{}, &pciState{}, &blkState{}, &netState{}, &clockState{}, &padded{}, &packed{}, &vmState{}} {
		for i := 0; i < 10; i++ {
			randomPlain(t, r, v)
			var want bytes.Buffer
			if err := binary.Write(&want, binary.LittleEndian, v); err != nil {
				t.Fatal(err)
			}
			got, err := encodePlain(v)
			if err != nil || !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("%T: encodePlain gives %x (%v), binary.Write %x", v, got, err, want.Bytes())
			}
		}
	}
}
