/*
 * The guests' freestanding runtime: port I/O, the serial console, the
 * clock and power ports, spinlocks, boot-info parameters and a bump
 * allocator over free memory. See include/bootinfo.h for the contract
 * with the VMM. Never uses RDTSC or RDRAND.
 */
#ifndef GUESTS_RT_H
#define GUESTS_RT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bootinfo.h"
#include "fmt.h"
#include "parse.h"

#define PAGE_SIZE 4096ull
#define MAX_VCPUS 64 /* FTCKPT_STACKS_GPA holds 64 stacks */

/* guest_main is each guest's entry, called on every vCPU with its index
 * and the boot info (already checked for magic and version). When it
 * returns, the machine powers off with status 0. */
void guest_main(unsigned cpu, struct boot_info *bi);

/* --- port I/O ------------------------------------------------------ */

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline void outw(uint16_t port, uint16_t v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

/* --- CPU --------------------------------------------------------------- */

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" : : : "memory");
}

static inline void barrier(void)
{
	__asm__ volatile("" : : : "memory");
}

static inline void cli(void)
{
	__asm__ volatile("cli" : : : "memory");
}

/* sti_hlt enables interrupts and halts; the STI shadow guarantees an
 * interrupt pending at STI wakes the HLT instead of slipping before it. */
static inline void sti_hlt(void)
{
	__asm__ volatile("sti; hlt" : : : "memory");
}

/* park stops this vCPU for good (interrupts off, HLT in a loop). */
__attribute__((noreturn)) void park(void);

/* --- spinlock ------------------------------------------------------ */

struct spinlock {
	volatile uint32_t locked;
};

/* spin_lock takes l with LOCK CMPXCHG, spinning read-only (with PAUSE)
 * while it is held. Not recursive; not safe against this vCPU's own
 * interrupt handlers unless interrupts are off. */
static inline void spin_lock(struct spinlock *l)
{
	for (;;) {
		uint32_t expected = 0;
		uint8_t ok;
		__asm__ volatile("lock cmpxchgl %3, %1\n\tsete %0"
				 : "=q"(ok), "+m"(l->locked), "+a"(expected)
				 : "r"(1u)
				 : "memory", "cc");
		if (ok)
			return;
		while (l->locked)
			cpu_relax();
	}
}

static inline void spin_unlock(struct spinlock *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/* --- console, clock, power ----------------------------------------- */

/* print writes s to COM1. print_u64 and print_hex write a number. Each
 * call is atomic with respect to other vCPUs' console output. */
void print(const char *s);
void print_u64(uint64_t v);
void print_hex(uint64_t v);

/* printk formats like fmt_snprintf (up to 255 bytes) and writes the result
 * to COM1 atomically with respect to other vCPUs. */
void printk(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* clock_ns reads the VMM's monotonic clock: FTCKPT_PORT_CLOCK_LO latches
 * it and returns the low half, FTCKPT_PORT_CLOCK_HI the latched high half.
 * Each call is two VM exits. */
uint64_t clock_ns(void);

/* power_off stops the machine with status (the VMM's exit status). */
__attribute__((noreturn)) void power_off(uint8_t status);

/* --- boot info ----------------------------------------------------- */

/* param_u64 returns parameter key parsed as decimal or 0x-hex, or def when
 * it is absent; a malformed value is reported on the console and def is
 * used. param_str returns the value or def. */
uint64_t param_u64(const struct boot_info *bi, const char *key, uint64_t def);
const char *param_str(const struct boot_info *bi, const char *key, const char *def);

/* free_pages is how many whole pages lie in [bi->free_start, mem_size). */
uint64_t free_pages(const struct boot_info *bi);

/* palloc returns bytes of zeroed memory aligned to align (a power of two),
 * carved from [bi->free_start, bi->mem_size) upward, or NULL when that is
 * exhausted. Memory is never freed. Precondition: called on vCPU 0 only
 * (not thread-safe; the boot info is recorded there). */
void *palloc(size_t bytes, size_t align);

#endif
