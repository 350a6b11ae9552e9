/*
 * memtouch: a dirty-page generator for checkpoint benchmarks. Its working
 * set is `ws` pages from bi->free_start (capped at the free memory, with a
 * message); each pass dirties the next `dirty` pages of it round-robin.
 * mode=small writes 16 bytes per page; mode=full rewrites all 4096 bytes
 * with an xorshift64 stream seeded by `seed`, so contents are
 * deterministic. `rate` passes per second, paced by the clock device
 * (0 = flat out); stops after `passes` passes (0 = forever); prints a
 * line every `every` passes with the stream state as a check value.
 */
#include "rt.h"
#include "xorshift.h"

#define NS_PER_S 1000000000ull

void guest_main(unsigned cpu, struct boot_info *bi)
{
	uint64_t ws = param_u64(bi, "ws", 256);
	uint64_t dirty = param_u64(bi, "dirty", 64);
	uint64_t rate = param_u64(bi, "rate", 0);
	uint64_t passes = param_u64(bi, "passes", 0);
	uint64_t every = param_u64(bi, "every", 100);
	uint64_t state = xorshift_seed(param_u64(bi, "seed", 1));
	const char *mode = param_str(bi, "mode", "small");
	uint64_t avail = free_pages(bi);
	uint8_t *base = (uint8_t *)(uintptr_t)((bi->free_start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
	uint64_t cursor = 0, total = 0, next_ns = 0, frac = 0, step = 0, rem = 0;
	bool full;

	if (cpu != 0)
		park();
	if (str_eq(mode, "full")) {
		full = true;
	} else if (str_eq(mode, "small")) {
		full = false;
	} else {
		printk("memtouch: mode must be small or full, not %s\n", mode);
		power_off(1);
	}
	if (ws > avail) {
		printk("memtouch: ws=%lu pages exceeds the %lu free pages; using %lu\n",
		       (unsigned long)ws, (unsigned long)avail, (unsigned long)avail);
		ws = avail;
	}
	if (ws == 0) {
		printk("memtouch: no working set (ws=0 or no free memory)\n");
		power_off(1);
	}
	if (dirty > ws)
		dirty = ws;
	if (every == 0)
		every = 1;
	printk("memtouch: start ws=%lu dirty=%lu mode=%s rate=%lu passes=%lu base=%p\n",
	       (unsigned long)ws, (unsigned long)dirty, full ? "full" : "small",
	       (unsigned long)rate, (unsigned long)passes, (void *)base);
	if (rate != 0) {
		step = NS_PER_S / rate;
		rem = NS_PER_S % rate;
		next_ns = clock_ns();
	}
	for (uint64_t pass = 1; passes == 0 || pass <= passes; pass++) {
		for (uint64_t j = 0; j < dirty; j++) {
			volatile uint64_t *page = (volatile uint64_t *)(base + cursor * PAGE_SIZE);
			if (full) {
				for (unsigned k = 0; k < PAGE_SIZE / 8; k++)
					page[k] = xorshift64(&state);
			} else {
				page[0] = pass;
				page[1] = cursor;
			}
			cursor = cursor + 1 == ws ? 0 : cursor + 1;
		}
		total += dirty;
		if (pass % every == 0)
			printk("memtouch: pass %lu dirtied %lu check=%016lx\n", (unsigned long)pass,
			       (unsigned long)total, (unsigned long)state);
		if (rate != 0) {
			next_ns += step;
			frac += rem;
			if (frac >= rate) {
				frac -= rate;
				next_ns++;
			}
			while (clock_ns() < next_ns)
				cpu_relax();
		}
	}
	printk("memtouch: done passes=%lu dirtied=%lu\n", (unsigned long)passes,
	       (unsigned long)total);
}
