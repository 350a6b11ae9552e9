/*
 * tick: timer interrupts through the 8259 PIC. Installs an IDT, remaps the
 * PIC to vector 32, programs PIT channel 0 periodic at `hz` (default 100,
 * clamped to [19, 10000]), then sleeps with "sti; hlt". The ISR counts
 * ticks; the main loop prints "tick N" for every multiple N of `every`
 * (default 100), so the output does not depend on how late it wakes, and
 * powers off after `ticks` ticks (0 = forever). With the in-kernel irqchip
 * (FTCKPT_BOOT_IRQCHIP) the PIC reaches the CPU through the BSP's LAPIC
 * LINT0 in ExtINT mode, which it sets explicitly; with the VMM's userspace
 * PIC the LAPIC is left alone. Both are driven through the same ports.
 */
#include "irq.h"
#include "rt.h"

static volatile uint64_t ticks;

static void on_tick(struct irq_frame *f)
{
	(void)f;
	ticks = ticks + 1;
}

void guest_main(unsigned cpu, struct boot_info *bi)
{
	uint64_t hz = param_u64(bi, "hz", 100);
	uint64_t every = param_u64(bi, "every", 100);
	uint64_t limit = param_u64(bi, "ticks", 0);
	uint64_t next_print, now;
	unsigned actual;

	if (cpu != 0)
		park();
	if (every == 0)
		every = 1;
	if (hz > 10000)
		hz = 10000;
	idt_init();
	idt_set_handler(PIC_VECTOR_BASE + IRQ_PIT, on_tick);
	pic_init();
	if (bi->flags & FTCKPT_BOOT_IRQCHIP)
		lapic_lint0_extint();
	actual = pit_periodic((unsigned)hz);
	printk("tick: start hz=%u every=%lu ticks=%lu irqchip=%s\n", actual,
	       (unsigned long)every, (unsigned long)limit,
	       (bi->flags & FTCKPT_BOOT_IRQCHIP) ? "kernel" : "user");
	pic_unmask(IRQ_PIT);
	next_print = every;
	for (;;) {
		cli();
		now = ticks;
		if (now < next_print && (limit == 0 || now < limit)) {
			sti_hlt();
			continue;
		}
		__asm__ volatile("sti" : : : "memory");
		for (; next_print <= now && (limit == 0 || next_print <= limit); next_print += every)
			printk("tick %lu\n", (unsigned long)next_print);
		if (limit != 0 && now >= limit) {
			cli();
			printk("tick: done ticks=%lu unexpected=%lu\n", (unsigned long)limit,
			       (unsigned long)irq_unexpected);
			return;
		}
	}
}
