package kvmapi

// x86 debug-register bits, named as in <asm/debugreg.h>: what
// KVM_SET_GUEST_DEBUG's debugreg[7] (DR7) and KVM_EXIT_DEBUG's DR6 hold.
const (
	// DR6: which condition fired.
	DR_TRAP0 = 0x1    // breakpoint 0 (DR0) matched
	DR_STEP  = 0x4000 // single step

	// DR7: breakpoint i is enabled by DR_GLOBAL_ENABLE << (i*DR_ENABLE_SIZE)
	// and its condition is (DR_RW_* | DR_LEN_*) << (DR_CONTROL_SHIFT +
	// i*DR_CONTROL_SIZE).
	DR_GLOBAL_ENABLE   = 0x2
	DR_ENABLE_SIZE     = 2
	DR_CONTROL_SHIFT   = 16
	DR_CONTROL_SIZE    = 4
	DR_RW_EXECUTE      = 0x0
	DR_LEN_1           = 0x0
	DR_GLOBAL_SLOWDOWN = 0x200 // GE: exact breakpoints
)
