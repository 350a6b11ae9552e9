#include "rt.h"

#define COM1_THR 0
#define COM1_LSR 5
#define LSR_THRE 0x20
#define LSR_POLLS 100000 /* give up waiting for THRE after this many reads */

static struct spinlock console_lock;
static const struct boot_info *rt_bi;
static uint64_t alloc_next; /* next free GPA for palloc; 0 = not started */

/* rt_main is called by _start (entry.S) on every vCPU. */
void rt_main(unsigned cpu, struct boot_info *bi);

void park(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" : : : "memory");
}

static void serial_putc(char c)
{
	for (int i = 0; i < LSR_POLLS; i++) {
		if (inb(FTCKPT_PORT_COM1 + COM1_LSR) & LSR_THRE)
			break;
		cpu_relax();
	}
	outb(FTCKPT_PORT_COM1 + COM1_THR, (uint8_t)c);
}

static void serial_write(const char *s, size_t n)
{
	spin_lock(&console_lock);
	for (size_t i = 0; i < n; i++)
		serial_putc(s[i]);
	spin_unlock(&console_lock);
}

void print(const char *s)
{
	serial_write(s, bounded_strlen(s, (size_t)-1));
}

void print_u64(uint64_t v)
{
	char buf[FMT_U64_MAX];
	serial_write(buf, fmt_u64(buf, v));
}

void print_hex(uint64_t v)
{
	char buf[18] = "0x";
	serial_write(buf, 2 + fmt_hex(buf + 2, v, 1));
}

void printk(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = fmt_vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	serial_write(buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

uint64_t clock_ns(void)
{
	uint64_t lo = inl(FTCKPT_PORT_CLOCK_LO);
	uint64_t hi = inl(FTCKPT_PORT_CLOCK_HI);
	return hi << 32 | lo;
}

void power_off(uint8_t status)
{
	outb(FTCKPT_PORT_POWER, status);
	park();
}

uint64_t param_u64(const struct boot_info *bi, const char *key, uint64_t def)
{
	const char *v = bootinfo_param(bi, key);
	uint64_t out;

	if (v == NULL)
		return def;
	if (parse_u64(v, bounded_strlen(v, FTCKPT_PARAM_VALUE), &out))
		return out;
	printk("param %s=%s is not a number; using %lu\n", key, v, (unsigned long)def);
	return def;
}

const char *param_str(const struct boot_info *bi, const char *key, const char *def)
{
	const char *v = bootinfo_param(bi, key);
	return v != NULL ? v : def;
}

uint64_t free_pages(const struct boot_info *bi)
{
	uint64_t start = (bi->free_start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
	return start < bi->mem_size ? (bi->mem_size - start) / PAGE_SIZE : 0;
}

void *palloc(size_t bytes, size_t align)
{
	uint64_t start, end;

	if (alloc_next == 0)
		alloc_next = rt_bi->free_start;
	start = (alloc_next + align - 1) & ~((uint64_t)align - 1);
	if (start < alloc_next || bytes > rt_bi->mem_size || start > rt_bi->mem_size - bytes)
		return NULL;
	end = start + bytes;
	alloc_next = end;
	__builtin_memset((void *)(uintptr_t)start, 0, bytes);
	return (void *)(uintptr_t)start;
}

void rt_main(unsigned cpu, struct boot_info *bi)
{
	if (bi->magic != FTCKPT_BOOTINFO_MAGIC || bi->version != FTCKPT_BOOTINFO_VERSION) {
		if (cpu == 0) {
			printk("guest: bad boot info at %p: magic %x version %u (want %x version %u)\n",
			       (void *)bi, bi->magic, bi->version, FTCKPT_BOOTINFO_MAGIC,
			       FTCKPT_BOOTINFO_VERSION);
			power_off(3);
		}
		park();
	}
	if (cpu == 0)
		rt_bi = bi;
	guest_main(cpu, bi);
	power_off(0);
}
