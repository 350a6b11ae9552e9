// Package kvmapi holds the KVM ioctls and kernel structs that ftckpt needs
// and that gokvm's kvm package lacks or wraps in a way that loses
// information. Everything else comes from github.com/bobuhiro11/gokvm/kvm.
//
// What is here, and why it is not gokvm's:
//   - Run: gokvm's kvm.Run turns EINTR into success, but a kick (EINTR) is the
//     pause barrier's signal and must be visible.
//   - SetIdentityMapAddr: gokvm passes a pointer to a uint32 where the kernel
//     reads a __u64.
//   - GetDirtyLog: gokvm turns ENOENT (no such slot) into success.
//   - InjectInterrupt: gokvm's passes the vector where the kernel reads a
//     pointer to struct kvm_interrupt.
//   - XSAVE/XSAVE2, MSRs with a fixed buffer, ENABLE_CAP, CLEAR_DIRTY_LOG,
//     RESET_DIRTY_RINGS, SET_GUEST_DEBUG (and the debug-register bits of
//     <asm/debugreg.h>), IRQ_LINE: absent from gokvm.
//
// Constants keep their C names; structs say which kernel struct they mirror.
// abi_test.go compiles a C program against the system's <linux/kvm.h> and
// checks every ioctl number, constant, struct size and field offset here
// (and of the gokvm structs ftckpt uses) against it.
package kvmapi
