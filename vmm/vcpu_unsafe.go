package vmm

import (
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
)

// runDataOf views the start of a vCPU's mmapped kvm_run area.
func runDataOf(run []byte) *kvm.RunData {
	return (*kvm.RunData)(unsafe.Pointer(&run[0]))
}

// exitData views the exit-reason union of kvm_run as bytes.
func exitData(r *kvm.RunData) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&r.Data[0])), len(r.Data)*8)
}
