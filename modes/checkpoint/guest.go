package checkpoint

import "github.com/ftckpt/ftckpt/vmm/kvmmachine"

// KVMGuest is kvmmachine.Runner, checkpoint mode's machine on KVM, under
// the name its callers used before it moved to package kvmmachine.
type KVMGuest = kvmmachine.Runner
