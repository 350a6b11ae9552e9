package vmm

import "unsafe"

// runWord returns kvm_run's first 32-bit word (request_interrupt_window and
// immediate_exit), for the atomic updates of step_kick.go. run is the
// vCPU's mmapped kvm_run, page-aligned, so the word is aligned.
func runWord(run []byte) *uint32 { return (*uint32)(unsafe.Pointer(&run[0])) }
