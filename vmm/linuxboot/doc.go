// Package linuxboot loads a Linux x86-64 bzImage, its initrd and command line into guest
// memory following the 64-bit boot protocol of Documentation/arch/x86/boot.rst, and says
// how to enter it.
//
// Load parses the setup header at image offset 0x1F1 (ParseHeader: boot flag 0xAA55,
// "HdrS", protocol ≥ 2.12 for XLF_KERNEL_64, LOADED_HIGH, every offset checked against
// the image length), builds the e820 map (BuildE820), places the pieces, fills struct
// boot_params (the zero page: the kernel's own setup header copied to 0x1F1 and modified,
// e820 table at 0x2D0, count at 0x1E8, ramdisk and command line pointers with their
// ext_ halves), and writes everything through Memory, the vmm's tracked write path.
//
// Guest-physical layout (MemSize 64 MiB, no PCI hole, a typical kernel):
//
//	0x0000_0000  +------------------------------+  usable RAM (e820 type 1)
//	             | IVT/BDA, left untouched      |
//	0x0000_0500  | boot GDT, 32 bytes:          |  0x10 __BOOT_CS, 0x18 __BOOT_DS
//	             |   null, null, CS, DS         |
//	0x0000_7000  | boot_params, 4 KiB           |  RSI at entry
//	             | (free for the vmm's page     |
//	             |  tables, e.g. 0x9000-0xBFFF) |
//	0x0002_0000  | command line + NUL           |  ≤ cmdline_size, ≤ 0x7FC00 bytes
//	0x0009_FC00  +------------------------------+  reserved (EBDA, VGA, BIOS), type 2
//	0x0010_0000  +------------------------------+  usable RAM from 1 MiB
//	             |                              |
//	pref_address | protected-mode kernel        |  typically 16 MiB; RIP = here + 0x200
//	             | … init_size bytes kept free  |
//	             |                              |
//	             | initrd, page-aligned, as     |  below initrd_addr_max+1 and 4 GiB
//	             | high as it fits              |
//	MemSize      +------------------------------+
//
// With Config.PCIHoleStart set, RAM stops there and resumes at 4 GiB (RAMRanges); the
// hole [PCIHoleStart, 4 GiB) is a gap in the e820 map, as on real PCs, where Linux puts PCI
// windows. Config.Reserved ranges (LAPIC, IOAPIC, ACPI data, …) are added and punched out
// of RAM. Nothing the loader writes may fall in them.
//
// Placement rules. The kernel goes at pref_address (aligned up to kernel_alignment when
// relocatable), needing max(init_size, image length) bytes of contiguous usable RAM;
// a relocatable kernel that does not fit there goes at the lowest aligned address from
// 1 MiB that fits; a non-relocatable one fails. The kernel always ends by 4 GiB. The initrd goes as high as it fits,
// page-aligned, from 1 MiB, clear of the kernel, ending by initrd_addr_max+1 and 4 GiB;
// only if it fits nowhere there and the kernel sets XLF_CAN_BE_LOADED_ABOVE_4G does it go
// above (QEMU and GRUB honour initrd_addr_max the same way). Errors for room wrap
// ErrNoRoom.
//
// Entering the kernel (Entry). The vmm puts the vCPU in 64-bit mode with paging, with page
// tables that identity-map at least [0, Entry.IdentityMapEnd) — mapping the first 4 GiB
// always suffices —, loads GDTR with the GDT this package wrote at GDTAddr, CS = __BOOT_CS
// and DS = ES = SS = __BOOT_DS with the descriptor caches in Entry.CS and Entry.DS,
// interrupts disabled, RSI = boot_params, RIP = Entry.RIP. The real-mode setup code does
// not run under this protocol, so CAN_USE_HEAP is cleared and heap_end_ptr left zero.
//
// Not done here: setup_data (SETUP_E820_EXT for more than 128 entries, DTB, RNG seed),
// acpi_rsdp_addr, EFI handover, min_alignment-based relaxed alignment, and the legacy
// 16/32-bit entries.
//
// On this platform a Linux guest is not practical, so the package is tested on the bytes it
// writes rather than by booting: the development machines have no /dev/kvm at all (their
// kernel is itself a PVM guest, so KVM refuses to bind), and where KVM exists it is
// software-nested at about a million guest instructions per second, where a distribution
// kernel does not print a line in minutes. The tests build synthetic bzImages at boot.rst's
// literal offsets and compare guest memory byte for byte; the code is written for real
// hardware, where the same Load boots an ordinary kernel.
package linuxboot
