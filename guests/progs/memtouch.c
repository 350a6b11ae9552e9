/*
 * memtouch: a dirty-page generator for checkpoint benchmarks. Its working
 * set is `ws` pages from bi->free_start (capped at the free memory, with a
 * message); each pass dirties the next `dirty` pages of it round-robin.
 * mode=small writes 16 bytes per page; mode=full rewrites all 4096 bytes
 * with an xorshift64 stream seeded by `seed`, so contents are
 * deterministic. `rate` passes per second, paced by the clock device
 * (0 = flat out); stops after `passes` passes (0 = forever); prints a
 * line every `every` passes with the stream state as a check value.
 * `writers` vCPUs (default 1; 0 or too many: all) share the work: each
 * rewrites its own slice of the working set and its share of `dirty` pages
 * per pass, paced alike; vCPU 0 counts the passes, prints (with the pages
 * all writers dirtied) and stops; the others park or keep writing.
 * fill=1 has each writer first fill its slice with its stream, once: a
 * guest holding that much data, of which the passes then change a part.
 */
#include "rt.h"
#include "xorshift.h"

#define NS_PER_S 1000000000ull

/* dirtied counts the pages every writer dirtied. */
static uint64_t dirtied;

void guest_main(unsigned cpu, struct boot_info *bi)
{
	uint64_t ws = param_u64(bi, "ws", 256);
	uint64_t dirty = param_u64(bi, "dirty", 64);
	uint64_t rate = param_u64(bi, "rate", 0);
	uint64_t passes = param_u64(bi, "passes", 0);
	uint64_t every = param_u64(bi, "every", 100);
	uint64_t seed = param_u64(bi, "seed", 1);
	const char *mode = param_str(bi, "mode", "small");
	uint64_t avail = free_pages(bi);
	uint8_t *base = (uint8_t *)(uintptr_t)((bi->free_start + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
	uint64_t writers = param_u64(bi, "writers", 1);
	uint64_t fill = param_u64(bi, "fill", 0);
	uint64_t total = 0, next_ns = 0, frac = 0, step = 0, rem = 0;
	bool full;

	if (writers == 0 || writers > bi->nr_vcpus)
		writers = bi->nr_vcpus > 0 ? bi->nr_vcpus : 1;
	if (cpu >= writers)
		park();
	if (str_eq(mode, "full")) {
		full = true;
	} else if (str_eq(mode, "small")) {
		full = false;
	} else {
		if (cpu != 0)
			park();
		printk("memtouch: mode must be small or full, not %s\n", mode);
		power_off(1);
	}
	if (ws > avail) {
		if (cpu == 0)
			printk("memtouch: ws=%lu pages exceeds the %lu free pages; using %lu\n",
			       (unsigned long)ws, (unsigned long)avail, (unsigned long)avail);
		ws = avail;
	}
	if (ws < writers) {
		if (cpu != 0)
			park();
		printk("memtouch: no working set for %lu writers (ws=%lu, or no free memory)\n",
		       (unsigned long)writers, (unsigned long)ws);
		power_off(1);
	}
	if (dirty > ws)
		dirty = ws;
	if (every == 0)
		every = 1;
	if (cpu == 0)
		printk("memtouch: start ws=%lu dirty=%lu mode=%s rate=%lu passes=%lu writers=%lu base=%p\n",
		       (unsigned long)ws, (unsigned long)dirty, full ? "full" : "small",
		       (unsigned long)rate, (unsigned long)passes, (unsigned long)writers,
		       (void *)base);
	/* This writer's slice [first, end) of the working set, its share of dirty. */
	uint64_t first = ws * cpu / writers, end = ws * (cpu + 1) / writers;
	uint64_t share = dirty * (cpu + 1) / writers - dirty * cpu / writers;
	uint64_t cursor = first;
	uint64_t state = xorshift_seed(seed + cpu);
	if (fill) {
		for (uint64_t p = first; p < end; p++) {
			volatile uint64_t *page = (volatile uint64_t *)(base + p * PAGE_SIZE);
			for (unsigned k = 0; k < PAGE_SIZE / 8; k++)
				page[k] = xorshift64(&state);
		}
		if (cpu == 0)
			printk("memtouch: filled %lu pages\n", (unsigned long)(end - first));
	}
	if (rate != 0) {
		step = NS_PER_S / rate;
		rem = NS_PER_S % rate;
		next_ns = clock_ns();
	}
	for (uint64_t pass = 1; passes == 0 || pass <= passes; pass++) {
		for (uint64_t j = 0; j < share; j++) {
			volatile uint64_t *page = (volatile uint64_t *)(base + cursor * PAGE_SIZE);
			if (full) {
				for (unsigned k = 0; k < PAGE_SIZE / 8; k++)
					page[k] = xorshift64(&state);
			} else {
				page[0] = pass;
				page[1] = cursor;
			}
			cursor = cursor + 1 == end ? first : cursor + 1;
		}
		total = __atomic_add_fetch(&dirtied, share, __ATOMIC_RELAXED);
		if (cpu == 0 && pass % every == 0)
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
	if (cpu != 0)
		park();
	printk("memtouch: done passes=%lu dirtied=%lu\n", (unsigned long)passes,
	       (unsigned long)total);
}
