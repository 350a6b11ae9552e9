/*
 * Parsing of numbers, IPv4 addresses and boot-info parameters.
 *
 * Pure code: compiles freestanding and on the host. Every input is
 * length-delimited or bounded by the boot-info field sizes; nothing
 * here trusts a NUL that might be missing.
 */
#ifndef GUESTS_PARSE_H
#define GUESTS_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bootinfo.h"

/* bounded_strlen returns the index of the first NUL in s[0..max), or max. */
size_t bounded_strlen(const char *s, size_t max);

/* str_eq says whether NUL-terminated strings a and b are equal. */
bool str_eq(const char *a, const char *b);

/* parse_u64 parses all n bytes of s as decimal, or as hex after "0x"/"0X".
 * It fails on an empty string, a stray byte, or overflow. */
bool parse_u64(const char *s, size_t n, uint64_t *out);

/* parse_i64 parses all n bytes of s as decimal with an optional leading
 * '-'; it fails on an empty string, a stray byte, or overflow. */
bool parse_i64(const char *s, size_t n, int64_t *out);

/* parse_ipv4 parses exactly "a.b.c.d" (each 0..255, 1-3 digits) into a
 * host-order address (a is the most significant byte). */
bool parse_ipv4(const char *s, size_t n, uint32_t *out);

/* bootinfo_param returns the NUL-terminated value of the first parameter
 * named key, or NULL if there is none. A parameter whose key or value
 * fills its field without a NUL is ignored, and nr_params is clamped to
 * FTCKPT_MAX_PARAMS. */
const char *bootinfo_param(const struct boot_info *bi, const char *key);

/* bootinfo_device returns the first device of the given FTCKPT_DEV_* kind,
 * or NULL; nr_devices is clamped to FTCKPT_MAX_DEVICES. */
const struct bootinfo_device *bootinfo_device(const struct boot_info *bi, uint32_t kind);

#endif
