/*
 * The contract between the ftckpt VMM and its bare-metal guests.
 *
 * This header mirrors vmm/bootinfo.go; change both together and bump
 * FTCKPT_BOOTINFO_VERSION.
 *
 * Entry state (set by the VMM on every vCPU before it first runs):
 *   - 64-bit long mode, paging on, the first min(memory, 64 GiB) of guest
 *     physical memory identity-mapped with 2 MiB pages (read/write, executable),
 *     plus the LAPIC and IOAPIC pages (0xFEC00000, 0xFEE00000) uncached.
 *   - CS = 0x08 (64-bit code), DS = ES = SS = FS = GS = 0x10 (data), from the
 *     VMM's GDT at FTCKPT_GDT_GPA. RFLAGS = 0x2 (interrupts off). No IDT:
 *     a guest that takes interrupts loads its own.
 *   - RIP = the ELF entry point; RDI = vCPU index (0 = bootstrap vCPU);
 *     RSI = FTCKPT_BOOTINFO_GPA; RSP = top of that vCPU's own stack.
 *   - CR4.OSFXSR is set, but guests are compiled with -mgeneral-regs-only.
 *
 * Guests must not execute RDTSC or RDRAND: replay cannot see them. Time comes
 * from the clock device below.
 */
#ifndef FTCKPT_BOOTINFO_H
#define FTCKPT_BOOTINFO_H

#include <stdint.h>

/* Guest-physical layout. */
#define FTCKPT_BOOTINFO_GPA 0x1000ULL  /* struct boot_info */
#define FTCKPT_GDT_GPA 0x2000ULL       /* the VMM's GDT */
#define FTCKPT_PML4_GPA 0x3000ULL      /* page tables: PML4, PDPT, then PDs */
#define FTCKPT_IMAGE_GPA 0x100000ULL   /* guests are linked here (1 MiB) */
#define FTCKPT_IMAGE_MAX 0x100000ULL   /* at most 1 MiB of image */
#define FTCKPT_STACKS_GPA 0x200000ULL  /* vCPU i's stack: [base+i*SIZE, base+(i+1)*SIZE) */
#define FTCKPT_STACK_SIZE 0x4000ULL    /* 16 KiB per vCPU, 64 vCPUs = 1 MiB */
#define FTCKPT_FREE_GPA 0x400000ULL    /* guest data may start here (4 MiB) */

/* I/O ports. */
#define FTCKPT_PORT_COM1 0x3f8   /* 16550 UART */
#define FTCKPT_PORT_POWER 0x501  /* outb(status): the machine stops with that status */
#define FTCKPT_PORT_CLOCK_LO 0x520 /* inl: latch monotonic ns, return low 32 bits */
#define FTCKPT_PORT_CLOCK_HI 0x524 /* inl: high 32 bits of the latched value */

#define FTCKPT_BOOTINFO_MAGIC 0x49425446u /* "FTBI" little-endian */
#define FTCKPT_BOOTINFO_VERSION 1u

#define FTCKPT_MAX_PARAMS 16
#define FTCKPT_PARAM_KEY 32
#define FTCKPT_PARAM_VALUE 96
#define FTCKPT_MAX_DEVICES 8

/* Device kinds in boot_info.devices. Zero is invalid. */
#define FTCKPT_DEV_VIRTIO_NET 1
#define FTCKPT_DEV_VIRTIO_BLK 2

struct bootinfo_param {
	char key[FTCKPT_PARAM_KEY];     /* NUL-terminated */
	char value[FTCKPT_PARAM_VALUE]; /* NUL-terminated */
};

struct bootinfo_device {
	uint32_t kind;    /* FTCKPT_DEV_* */
	uint32_t irq;     /* legacy IRQ line (PIC/IOAPIC pin) */
	uint64_t io_base; /* virtio legacy I/O port base (BAR0) */
	uint32_t pci_bdf; /* bus << 8 | device << 3 | function */
	uint32_t reserved;
};

struct boot_info {
	uint32_t magic;    /* FTCKPT_BOOTINFO_MAGIC */
	uint32_t version;  /* FTCKPT_BOOTINFO_VERSION */
	uint32_t nr_vcpus;
	uint32_t flags;    /* FTCKPT_BOOT_* */
	uint64_t mem_size; /* bytes of guest RAM, from GPA 0 */
	uint64_t free_start; /* first GPA the guest may use for data */
	uint32_t nr_params;
	uint32_t nr_devices;
	struct bootinfo_param params[FTCKPT_MAX_PARAMS];
	struct bootinfo_device devices[FTCKPT_MAX_DEVICES];
};

/* boot_info.flags */
#define FTCKPT_BOOT_IRQCHIP 1u /* in-kernel PIC/IOAPIC/LAPIC; else userspace PIC on vCPU 0 */

#endif
