package vmm

import (
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// runDataOf views the start of a vCPU's mmapped kvm_run area.
func runDataOf(run []byte) *kvm.RunData {
	return (*kvm.RunData)(unsafe.Pointer(&run[0]))
}

// exitData views the exit-reason union of kvm_run as bytes.
func exitData(r *kvm.RunData) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&r.Data[0])), len(r.Data)*8)
}

// syncedRegs views the registers, special registers and vCPU events that
// KVM_RUN stores in kvm_run when kvm_valid_regs asks for them.
func syncedRegs(run []byte) (*kvm.Regs, *kvm.Sregs, *kvm.VCPUEvents) {
	return (*kvm.Regs)(unsafe.Pointer(&run[kvmapi.RunSyncRegsOffset])),
		(*kvm.Sregs)(unsafe.Pointer(&run[kvmapi.RunSyncSregsOffset])),
		(*kvm.VCPUEvents)(unsafe.Pointer(&run[kvmapi.RunSyncEventsOffset]))
}
