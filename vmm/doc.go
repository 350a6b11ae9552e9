// Package vmm is ftckpt's machine on KVM: guest memory, vCPUs, devices and
// their state.
//
// A Machine (New) owns the VM and its vCPUs, each on a locked OS thread of
// its own, and the guest's memory (GuestMemory: every write the VMM makes
// goes through WriteAt, which marks the page dirty for the next harvest).
// Pause is a barrier: every device quiesces, then every vCPU is kicked out
// of KVM_RUN (immediate_exit and a signal) and parks only once the exit it
// was handling is complete, so a paused machine's memory and devices do not
// change; while parked, a vCPU's thread runs the ioctls others hand it, so
// state capture runs on every vCPU at once (PauseSaving).
//
// Everything with state is a Component: the VM (irqchips, PIT, clock),
// each vCPU, and every Device, which must also be a Quiescer (the compiler
// refuses a device that cannot pause). SaveState writes one versioned,
// CRC32C-checked encoding; RestoreState finds each section by its
// component's ID and verifies everything before it changes anything.
// Snapshots add the resident pages (ftckpt run --snapshot).
//
// Devices: PCI with legacy virtio-net and virtio-blk, a serial port, and the
// PIC and PIT for machines without the in-kernel irqchip; backends for the
// network (a UDP front, tap) and the disk (an image file). DEVICES.md has
// the details.
//
// A Stepper is the single-vCPU machine replay mode drives exit by exit:
// userspace interrupts, kicks, RunTo by hardware breakpoint or single step,
// and a hash of the registers for landings. vmm/kvmmachine adapts both to
// the modes' contract (vmm/machine); vmm/kvmapi holds the raw KVM ioctls.
package vmm
