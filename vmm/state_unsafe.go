package vmm

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// rawBytes views *p as the bytes of its memory image, for appending to a
// state encoding without encoding/binary's reflection (tens of µs for a
// vCPU's state, in the checkpoint pause). T must be one of packedTypes: a
// struct without padding, so that on this little-endian host its image is
// byte for byte what binary.Write writes for it, except for blank fields,
// which hold what was put there (the kernel's reserved fields, which it
// zeroes) where binary.Write writes zeros. binary.Read skips blank fields,
// so either decodes the same.
func rawBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// rawSliceBytes is rawBytes for a slice of T.
func rawSliceBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(zero)))
}

// packedTypes are the types rawBytes may view; checkPacked runs at init.
var packedTypes = []any{
	kvm.Regs{}, kvm.Sregs{}, kvm.XCRS{}, kvm.DebugRegs{}, kvm.LAPICState{}, kvm.VCPUEvents{},
	kvm.CPUIDEntry2{}, kvmapi.MSREntry{}, kvm.IRQChip{}, kvm.PITState2{}, kvm.ClockData{},
}

func init() {
	if err := checkPacked(packedTypes); err != nil {
		panic(err)
	}
}

// checkPacked says which of types has padding (its size in memory is not
// the size binary.Write gives it) or is not a struct.
func checkPacked(types []any) error {
	for _, v := range types {
		t := reflect.TypeOf(v)
		if t.Kind() != reflect.Struct || binary.Size(v) != int(t.Size()) {
			return fmt.Errorf("vmm: %v is %d bytes in memory and %d encoded: state encoding by memory image needs a struct without padding",
				t, t.Size(), binary.Size(v))
		}
	}
	return nil
}

// packedStructs caches, by type, whether a struct has no padding (so that
// encodePlain may copy its memory image; see rawBytes).
var packedStructs sync.Map // reflect.Type → bool

// plainImage returns a copy of the memory image of *v if v points to a
// struct without padding, whose image is then what binary.Write writes for
// it (its blank fields hold zeros: only binary.Read and Go code fill these
// structs, and neither writes a blank field), and false otherwise.
func plainImage(v any) ([]byte, bool) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		return nil, false
	}
	t := rv.Elem().Type()
	packed, ok := packedStructs.Load(t)
	if !ok {
		packed = binary.Size(v) == int(t.Size())
		packedStructs.Store(t, packed)
	}
	if !packed.(bool) {
		return nil, false
	}
	return append([]byte(nil), unsafe.Slice((*byte)(rv.UnsafePointer()), t.Size())...), true
}
