#include "irq.h"
#include "rt.h"

#define ISR_STUB_SIZE 16 /* as in isr.S */
#define KERNEL_CS 0x08   /* the VMM's 64-bit code segment */
#define GATE_INTR 0x8E   /* present, DPL 0, 64-bit interrupt gate */

/* This mirrors the 64-bit IDT gate descriptor (Intel SDM vol. 3, 6.14.1). */
struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
} __attribute__((packed));

struct idt_ptr {
	uint16_t limit;
	uint64_t base;
} __attribute__((packed));

extern const char isr_stubs[];
void isr_dispatch(struct irq_frame *f);

static struct idt_gate idt[256] __attribute__((aligned(16)));
static irq_handler handlers[256];
volatile uint64_t irq_unexpected;

void idt_load(void)
{
	struct idt_ptr p = { sizeof(idt) - 1, (uint64_t)(uintptr_t)idt };
	__asm__ volatile("lidt %0" : : "m"(p) : "memory");
}

void idt_init(void)
{
	for (unsigned v = 0; v < 256; v++) {
		uint64_t a = (uint64_t)(uintptr_t)(isr_stubs + v * ISR_STUB_SIZE);
		idt[v] = (struct idt_gate){
			.off_lo = (uint16_t)a,
			.sel = KERNEL_CS,
			.type = GATE_INTR,
			.off_mid = (uint16_t)(a >> 16),
			.off_hi = (uint32_t)(a >> 32),
		};
	}
	idt_load();
}

void idt_set_handler(unsigned vector, irq_handler h)
{
	if (vector < 256)
		__atomic_store_n(&handlers[vector], h, __ATOMIC_RELEASE);
}

/* pic_spurious says whether an IRQ 7 or 15 is spurious: the PIC raised it
 * but its in-service bit is clear. */
static bool pic_spurious(unsigned irq)
{
	uint16_t cmd = irq < 8 ? 0x20 : 0xA0;

	if ((irq & 7) != 7)
		return false;
	outb(cmd, 0x0B); /* OCW3: read ISR */
	return (inb(cmd) & 0x80) == 0;
}

void isr_dispatch(struct irq_frame *f)
{
	unsigned v = (unsigned)f->vector;
	irq_handler h = __atomic_load_n(&handlers[v & 255], __ATOMIC_ACQUIRE);

	if (v >= PIC_VECTOR_BASE && v < PIC_VECTOR_BASE + 16) {
		unsigned irq = v - PIC_VECTOR_BASE;
		if (pic_spurious(irq)) {
			if (irq == 15)
				pic_eoi(2); /* the master did see the cascade */
			irq_unexpected++;
			return;
		}
		if (h != NULL)
			h(f);
		else
			irq_unexpected++;
		pic_eoi(irq);
		return;
	}
	if (h != NULL) {
		h(f);
		return;
	}
	if (v < 32) {
		printk("guest: exception %u error %lx at rip %lx rsp %lx\n", v,
		       (unsigned long)f->error, (unsigned long)f->rip, (unsigned long)f->rsp);
		power_off(4);
	}
	irq_unexpected++;
}
