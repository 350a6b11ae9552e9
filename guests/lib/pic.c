#include "irq.h"
#include "rt.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xA0
#define PIC2_DATA 0xA1
#define PIC_EOI 0x20
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define PIT_HZ 1193182u

#define LAPIC_BASE 0xFEE00000ull
#define LAPIC_SVR 0xF0
#define LAPIC_LVT0 0x350
#define LAPIC_SVR_ENABLE 0x100
#define LAPIC_SPURIOUS_VECTOR 0xFF
#define LVT_EXTINT (7u << 8)

static uint16_t pic_mask = 0xFFFF;

void pic_init(void)
{
	outb(PIC1_CMD, 0x11); /* ICW1: edge, cascade, ICW4 follows */
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, PIC_VECTOR_BASE); /* ICW2: vector base */
	outb(PIC2_DATA, PIC_VECTOR_BASE + 8);
	outb(PIC1_DATA, 1 << 2); /* ICW3: slave on IRQ 2 */
	outb(PIC2_DATA, 2);
	outb(PIC1_DATA, 0x01); /* ICW4: 8086 mode */
	outb(PIC2_DATA, 0x01);
	pic_mask = 0xFFFF;
	outb(PIC1_DATA, 0xFF);
	outb(PIC2_DATA, 0xFF);
}

void pic_unmask(unsigned irq)
{
	if (irq >= 16)
		return;
	pic_mask &= (uint16_t)~(1u << irq);
	if (irq >= 8)
		pic_mask &= (uint16_t)~(1u << 2); /* the cascade */
	outb(PIC1_DATA, (uint8_t)pic_mask);
	outb(PIC2_DATA, (uint8_t)(pic_mask >> 8));
}

void pic_eoi(unsigned irq)
{
	if (irq >= 8)
		outb(PIC2_CMD, PIC_EOI);
	outb(PIC1_CMD, PIC_EOI);
}

unsigned pit_periodic(unsigned hz)
{
	uint32_t div;

	if (hz < 19)
		hz = 19;
	if (hz > 10000)
		hz = 10000;
	div = (PIT_HZ + hz / 2) / hz;
	outb(PIT_CMD, 0x34); /* channel 0, lobyte/hibyte, mode 2, binary */
	outb(PIT_CH0, (uint8_t)div);
	outb(PIT_CH0, (uint8_t)(div >> 8));
	return (PIT_HZ + div / 2) / div;
}

static void lapic_write(uint32_t reg, uint32_t v)
{
	*(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v;
}

void lapic_lint0_extint(void)
{
	lapic_write(LAPIC_SVR, LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR);
	lapic_write(LAPIC_LVT0, LVT_EXTINT);
}
