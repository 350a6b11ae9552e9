/*
 * The host test harness for the guests' pure code (guests/pure/): plain
 * C with a main, built with the host gcc by guests_test.go (with
 * AddressSanitizer and UndefinedBehaviorSanitizer when available) and run
 * there. Every suite is deterministic: randomness comes from a seeded
 * xorshift64.
 */
#ifndef GUESTS_TEST_HARNESS_H
#define GUESTS_TEST_HARNESS_H

#include <stdint.h>
#include <stdio.h>

extern unsigned long checks, failures;

#define CHECK(cond, ...)                                                              \
	do {                                                                          \
		checks++;                                                             \
		if (!(cond)) {                                                        \
			failures++;                                                   \
			fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                 \
			fputc('\n', stderr);                                          \
		}                                                                     \
	} while (0)

/* test_rand returns the next value of the harness's seeded stream. */
uint64_t test_rand(void);

void test_fmt(void);
void test_parse(void);
void test_crc_record(void);
void test_vring(void);
void test_net(void);
void test_kv(void);
void test_kvtable(void);

#endif
