/*
 * Interrupts: a 256-entry IDT of 64-bit interrupt gates whose stubs
 * (lib/isr.S) save every GPR and call isr_dispatch; the 8259 PIC pair and
 * the 8254 PIT channel 0; the local APIC's LINT0 for the in-kernel irqchip.
 */
#ifndef GUESTS_IRQ_H
#define GUESTS_IRQ_H

#include <stdbool.h>
#include <stdint.h>

#define PIC_VECTOR_BASE 32 /* IRQ n arrives as vector 32 + n after pic_init */
#define IRQ_PIT 0

/* The stack at isr_dispatch: the GPRs isr.S pushed, then the vector and
 * error code (0 when the CPU pushes none), then the CPU's frame. */
struct irq_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

typedef void (*irq_handler)(struct irq_frame *f);

/* idt_init fills the IDT (shared by all vCPUs) with the stubs and loads it
 * on the calling vCPU. Unhandled exceptions (vectors 0-31) print the
 * frame and power off with status 4; other unhandled vectors are counted
 * in irq_unexpected. */
void idt_init(void);

/* idt_load loads the already-initialised IDT on the calling vCPU. */
void idt_load(void);

/* idt_set_handler installs h for vector. For PIC vectors the dispatcher
 * sends the EOI after h returns (and drops spurious IRQ 7/15). */
void idt_set_handler(unsigned vector, irq_handler h);

extern volatile uint64_t irq_unexpected;

/* pic_init remaps the PICs to PIC_VECTOR_BASE..+15 and masks every line. */
void pic_init(void);
void pic_unmask(unsigned irq);
void pic_eoi(unsigned irq);

/* pit_periodic programs PIT channel 0 as a rate generator (mode 2) at
 * about hz interrupts per second, hz clamped to [19, 10000]; it returns
 * the rate actually programmed (1193182 / divisor, rounded). */
unsigned pit_periodic(unsigned hz);

/* lapic_lint0_extint sets the BSP's local APIC software-enabled with
 * LINT0 in ExtINT mode, so the in-kernel PIC reaches the CPU. Only for
 * FTCKPT_BOOT_IRQCHIP machines: without it the LAPIC page is not emulated. */
void lapic_lint0_extint(void);

#endif
