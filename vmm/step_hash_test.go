package vmm

import (
	"bytes"
	"encoding/binary"
	"hash/crc64"
	"math/rand"
	"reflect"
	"testing"

	"github.com/bobuhiro11/gokvm/kvm"
)

func randomRegs(r *rand.Rand) kvm.Regs {
	var regs kvm.Regs
	v := reflect.ValueOf(&regs).Elem()
	for i := 0; i < v.NumField(); i++ {
		v.Field(i).SetUint(r.Uint64())
	}
	return regs
}

func TestHashRegs(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for round := 0; round < 200; round++ {
		regs := randomRegs(r)
		h := HashRegs(&regs)
		// Independently: the kvm_regs bytes, TF and RF cleared, CRC-64/ECMA.
		masked := regs
		masked.RFLAGS &^= 1<<8 | 1<<16
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, &masked)
		if want := crc64.Checksum(b.Bytes(), crc64.MakeTable(crc64.ECMA)); h != want {
			t.Fatalf("hash %#x, want %#x", h, want)
		}
		// Any bit of any field changes it, but TF and RF.
		v := reflect.ValueOf(&regs).Elem()
		for i := 0; i < v.NumField(); i++ {
			bit := uint(r.Intn(64))
			flipped := regs
			f := reflect.ValueOf(&flipped).Elem().Field(i)
			f.SetUint(f.Uint() ^ 1<<bit)
			debugBit := v.Type().Field(i).Name == "RFLAGS" && (bit == 8 || bit == 16)
			if same := HashRegs(&flipped) == h; same != debugBit {
				t.Fatalf("flipping bit %d of %s: hash unchanged=%v", bit, v.Type().Field(i).Name, same)
			}
		}
	}
	// Swapping two registers' values changes it: the hash is positional.
	regs := randomRegs(r)
	swapped := regs
	swapped.RAX, swapped.RBX = regs.RBX, regs.RAX
	if HashRegs(&regs) == HashRegs(&swapped) {
		t.Fatal("RAX and RBX swapped hash alike")
	}
}
