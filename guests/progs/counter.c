/*
 * counter: prints "count N" for N = 0, 1, 2, ... on vCPU 0, with a busy
 * loop of `every` iterations between lines; stops after `limit` lines
 * (0 = forever). The count lives in memory (a global), so a restored or
 * failed-over machine continues the sequence exactly.
 */
#include "rt.h"

static volatile uint64_t count;

void guest_main(unsigned cpu, struct boot_info *bi)
{
	uint64_t limit = param_u64(bi, "limit", 0);
	uint64_t every = param_u64(bi, "every", 1000);

	if (cpu != 0)
		park();
	printk("counter: start limit=%lu every=%lu\n", (unsigned long)limit, (unsigned long)every);
	for (; limit == 0 || count < limit; count++) {
		printk("count %lu\n", (unsigned long)count);
		for (uint64_t i = 0; i < every; i++)
			barrier();
	}
	printk("counter: done %lu\n", (unsigned long)count);
}
