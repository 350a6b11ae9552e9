/*
 * xorshift64 (Marsaglia): the guests' only source of "randomness", seeded
 * from parameters or record numbers, so every run is reproducible.
 */
#ifndef GUESTS_XORSHIFT_H
#define GUESTS_XORSHIFT_H

#include <stdint.h>

/* xorshift_seed maps any seed, including 0, to a valid (non-zero) state. */
static inline uint64_t xorshift_seed(uint64_t seed)
{
	seed ^= 0x9E3779B97F4A7C15ull;
	return seed != 0 ? seed : 0x9E3779B97F4A7C15ull;
}

/* xorshift64 advances *state (never 0) and returns the new value. */
static inline uint64_t xorshift64(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

#endif
