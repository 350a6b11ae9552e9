/*
 * Formatting: decimal/hex conversion and a small snprintf.
 *
 * Pure code: compiles freestanding (in guests) and on the host (in
 * guests/test), touches no hardware and keeps no state.
 */
#ifndef GUESTS_FMT_H
#define GUESTS_FMT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* FMT_U64_MAX is the longest fmt_u64 output (UINT64_MAX has 20 digits). */
#define FMT_U64_MAX 20

/* fmt_u64 writes v in decimal to buf (at least FMT_U64_MAX bytes) without a
 * terminating NUL and returns the number of characters written. */
size_t fmt_u64(char *buf, uint64_t v);

/* fmt_hex writes v in lower-case hex, zero-padded to at least min_digits
 * (at most 16) digits, without a NUL; buf holds at least 16 bytes. */
size_t fmt_hex(char *buf, uint64_t v, unsigned min_digits);

/*
 * fmt_vsnprintf is a subset of vsnprintf: flags '-' and '0', a width
 * (digits or '*', at most 255),
 * a precision for %s ('.N' or '.*'), length modifiers l, ll, z, and the
 * conversions d i u x X p s c %. Like C's, it returns the length the
 * whole output would have had and, when cap > 0, always NUL-terminates
 * within cap bytes. An unknown conversion is copied out verbatim.
 */
int fmt_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);
int fmt_snprintf(char *buf, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
