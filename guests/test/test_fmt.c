#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fmt.h"
#include "harness.h"

/* same compares fmt_snprintf with libc's snprintf for one call. */
#define SAME(cap, fmt, ...)                                                              \
	do {                                                                             \
		char a[300], b[300];                                                     \
		memset(a, 'X', sizeof(a));                                               \
		memset(b, 'X', sizeof(b));                                               \
		int na = fmt_snprintf(a, (cap), fmt, __VA_ARGS__);                       \
		int nb = snprintf(b, (cap), fmt, __VA_ARGS__);                           \
		CHECK(na == nb && memcmp(a, b, sizeof(a)) == 0,                          \
		      "format \"%s\" cap %zu: got %d \"%.*s\" want %d \"%.*s\"", fmt,    \
		      (size_t)(cap), na, (int)((cap) ? strnlen(a, (cap)) : 0), a, nb,    \
		      (int)((cap) ? strnlen(b, (cap)) : 0), b);                          \
	} while (0)

void test_fmt(void)
{
	static const uint64_t edge[] = { 0, 1, 9, 10, 99, 100, 0x7f, 0x80, 0xff, 0xffff,
					 0x7fffffff, 0x80000000u, 0xffffffffu, 0x100000000ull,
					 999999999999ull, INT64_MAX, (uint64_t)INT64_MAX + 1,
					 UINT64_MAX - 1, UINT64_MAX };
	char buf[32];

	for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]); i++) {
		uint64_t v = edge[i];
		long sv = (long)v;
		SAME(300, "%lu|%lx|%lX|%ld|%d|%u|%x", (unsigned long)v, (unsigned long)v,
		     (unsigned long)v, sv, (int)v, (unsigned)v, (unsigned)v);
		SAME(300, "[%20lu][%-20lu][%020lu][%05ld][%-8d][%08x][%016lx]", (unsigned long)v,
		     (unsigned long)v, (unsigned long)v, sv, (int)v, (unsigned)v, (unsigned long)v);
		SAME(300, "%zu %llu %lld", (size_t)v, (unsigned long long)v, (long long)v);
		size_t n = fmt_u64(buf, v);
		char want[32];
		snprintf(want, sizeof(want), "%lu", (unsigned long)v);
		CHECK(n == strlen(want) && memcmp(buf, want, n) == 0, "fmt_u64(%s)", want);
		n = fmt_hex(buf, v, 16);
		snprintf(want, sizeof(want), "%016lx", (unsigned long)v);
		CHECK(n == 16 && memcmp(buf, want, n) == 0, "fmt_hex(%s, 16)", want);
	}
	for (int i = 0; i < 20000; i++) {
		uint64_t v = test_rand() >> (test_rand() % 64);
		unsigned w = (unsigned)(test_rand() % 25);
		size_t cap = (size_t)(test_rand() % 40);
		SAME(cap, "a%*lu b%-*ld c%0*lx d%s", (int)w, (unsigned long)v, (int)w, -(long)v,
		     (int)w, (unsigned long)v, "tail");
	}
	SAME(300, "%s|%10s|%-10s|%.3s|%.*s|%c|%%|%5c", "hello", "hi", "hi", "abcdef", 2, "xyz", 'q',
	     'z');
	SAME(300, "%s", "");
	SAME(1, "%s", "abc");
	SAME(0, "%s", "abc");
	SAME(4, "%d", -12345);
	SAME(300, "%p", (void *)0x1234);
	SAME(300, "%d %i", INT32_MIN, INT32_MAX);

	/* Unknown conversions are copied out, and a lone '%' at the end too
	 * (formats passed through a variable: the compiler would reject them). */
	const char *volatile odd = "a%qb";
	CHECK(fmt_snprintf(buf, sizeof(buf), odd, 0) == 4 && strcmp(buf, "a%qb") == 0,
	      "unknown conversion gave \"%s\"", buf);
	odd = "ab%";
	CHECK(fmt_snprintf(buf, sizeof(buf), odd, 0) == 3 && strcmp(buf, "ab%") == 0,
	      "trailing %% gave \"%s\"", buf);
	const char *volatile null_str = NULL;
	CHECK(fmt_snprintf(buf, sizeof(buf), "%s", null_str) == 6 && strcmp(buf, "(null)") == 0,
	      "NULL string");
	/* Absurd widths are clamped, never overrun. */
	CHECK(fmt_snprintf(buf, sizeof(buf), "%99999999d", 1) == 255 && strlen(buf) == 31,
	      "huge width");
}
