#include "parse.h"

size_t bounded_strlen(const char *s, size_t max)
{
	size_t n = 0;

	while (n < max && s[n] != '\0')
		n++;
	return n;
}

bool str_eq(const char *a, const char *b)
{
	while (*a != '\0' && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

static int digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return 99;
}

bool parse_u64(const char *s, size_t n, uint64_t *out)
{
	uint64_t base = 10, v = 0;

	if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
		n -= 2;
	}
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		uint64_t d = (uint64_t)digit_value(s[i]);
		if (d >= base)
			return false;
		if (v > (UINT64_MAX - d) / base)
			return false;
		v = v * base + d;
	}
	*out = v;
	return true;
}

bool parse_i64(const char *s, size_t n, int64_t *out)
{
	bool neg = false;
	uint64_t v = 0, limit;

	if (n > 0 && s[0] == '-') {
		neg = true;
		s++;
		n--;
	}
	if (n == 0)
		return false;
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (limit - d) / 10)
			return false;
		v = v * 10 + d;
	}
	if (neg)
		*out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
	else
		*out = (int64_t)v;
	return true;
}

bool parse_ipv4(const char *s, size_t n, uint32_t *out)
{
	uint32_t addr = 0;
	size_t i = 0;

	for (int part = 0; part < 4; part++) {
		unsigned v = 0, digits = 0;

		if (part > 0) {
			if (i >= n || s[i] != '.')
				return false;
			i++;
		}
		while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 3) {
			v = v * 10 + (unsigned)(s[i] - '0');
			digits++;
			i++;
		}
		if (digits == 0 || v > 255)
			return false;
		addr = addr << 8 | v;
	}
	if (i != n)
		return false;
	*out = addr;
	return true;
}

const char *bootinfo_param(const struct boot_info *bi, const char *key)
{
	uint32_t nr = bi->nr_params;
	size_t klen = bounded_strlen(key, FTCKPT_PARAM_KEY);

	if (nr > FTCKPT_MAX_PARAMS)
		nr = FTCKPT_MAX_PARAMS;
	if (klen == FTCKPT_PARAM_KEY)
		return NULL;
	for (uint32_t i = 0; i < nr; i++) {
		const struct bootinfo_param *p = &bi->params[i];
		if (bounded_strlen(p->key, FTCKPT_PARAM_KEY) != klen)
			continue;
		if (__builtin_memcmp(p->key, key, klen) != 0)
			continue;
		if (bounded_strlen(p->value, FTCKPT_PARAM_VALUE) == FTCKPT_PARAM_VALUE)
			continue;
		return p->value;
	}
	return NULL;
}

const struct bootinfo_device *bootinfo_device(const struct boot_info *bi, uint32_t kind)
{
	uint32_t nr = bi->nr_devices;

	if (nr > FTCKPT_MAX_DEVICES)
		nr = FTCKPT_MAX_DEVICES;
	for (uint32_t i = 0; i < nr; i++)
		if (kind != 0 && bi->devices[i].kind == kind)
			return &bi->devices[i];
	return NULL;
}
