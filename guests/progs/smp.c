/*
 * smp: every vCPU adds to its own private counter and to one shared counter
 * in the same spinlock-protected section, `iters` times per round. After
 * each of its rounds vCPU 0 takes the lock and checks that the private
 * counters add up to the shared one: "smp: round R OK sum=S", or
 * "smp: VIOLATION ..." and power-off with status 1. The shared increment
 * is a plain read-modify-write, so a lock that does not exclude, or state
 * torn by a checkpoint, shows up as a violation. vCPU 0 powers off after
 * `rounds` rounds (0 = forever); the other vCPUs just keep looping.
 */
#include "rt.h"

struct percpu {
	volatile uint64_t count;
} __attribute__((aligned(64)));

static struct percpu priv[MAX_VCPUS];
static volatile uint64_t shared;
static struct spinlock lock;

void guest_main(unsigned cpu, struct boot_info *bi)
{
	uint64_t iters = param_u64(bi, "iters", 1000);
	uint64_t rounds = param_u64(bi, "rounds", 0);
	unsigned ncpu = bi->nr_vcpus;

	if (ncpu == 0 || ncpu > MAX_VCPUS)
		ncpu = MAX_VCPUS;
	if (cpu >= ncpu)
		park();
	if (cpu == 0)
		printk("smp: start vcpus=%u iters=%lu rounds=%lu\n", ncpu, (unsigned long)iters,
		       (unsigned long)rounds);
	for (uint64_t round = 1;; round++) {
		uint64_t sum = 0, seen;

		for (uint64_t i = 0; i < iters; i++) {
			spin_lock(&lock);
			priv[cpu].count = priv[cpu].count + 1;
			shared = shared + 1;
			spin_unlock(&lock);
		}
		if (cpu != 0)
			continue;
		spin_lock(&lock);
		for (unsigned c = 0; c < ncpu; c++)
			sum += priv[c].count;
		seen = shared;
		spin_unlock(&lock);
		if (sum != seen) {
			printk("smp: VIOLATION round %lu private sum=%lu shared=%lu\n",
			       (unsigned long)round, (unsigned long)sum, (unsigned long)seen);
			power_off(1);
		}
		printk("smp: round %lu OK sum=%lu\n", (unsigned long)round, (unsigned long)sum);
		if (rounds != 0 && round >= rounds) {
			for (unsigned c = 0; c < ncpu; c++)
				printk("smp: vcpu %u count=%lu\n", c, (unsigned long)priv[c].count);
			return;
		}
	}
}
