#include "fmt.h"

size_t fmt_u64(char *buf, uint64_t v)
{
	char tmp[FMT_U64_MAX];
	size_t n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	for (size_t i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

static size_t fmt_hex_case(char *buf, uint64_t v, unsigned min_digits, int upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[16];
	size_t n = 0;

	if (min_digits > 16)
		min_digits = 16;
	do {
		tmp[n++] = digits[v & 0xf];
		v >>= 4;
	} while (v != 0);
	while (n < min_digits)
		tmp[n++] = '0';
	for (size_t i = 0; i < n; i++)
		buf[i] = tmp[n - 1 - i];
	return n;
}

size_t fmt_hex(char *buf, uint64_t v, unsigned min_digits)
{
	return fmt_hex_case(buf, v, min_digits, 0);
}

struct out {
	char *buf;
	size_t cap;
	size_t n;
};

static void put(struct out *o, char c)
{
	if (o->n + 1 < o->cap)
		o->buf[o->n] = c;
	o->n++;
}

static void put_padded(struct out *o, const char *s, size_t len, unsigned width,
		       int left, char pad)
{
	size_t fill = width > len ? width - len : 0;

	if (!left)
		for (size_t i = 0; i < fill; i++)
			put(o, pad);
	for (size_t i = 0; i < len; i++)
		put(o, s[i]);
	if (left)
		for (size_t i = 0; i < fill; i++)
			put(o, ' ');
}

/* The widest field we honour; wider requests are clamped. */
#define FMT_WIDTH_MAX 255

int fmt_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap)
{
	struct out o = { buf, cap, 0 };

	while (*fmt) {
		const char *start = fmt;
		int left = 0, zero = 0, longs = 0, has_prec = 0;
		unsigned width = 0;
		size_t prec = 0;
		char num[2 + 24];
		size_t len;

		if (*fmt != '%') {
			put(&o, *fmt++);
			continue;
		}
		fmt++;
		for (;; fmt++) {
			if (*fmt == '-')
				left = 1;
			else if (*fmt == '0')
				zero = 1;
			else
				break;
		}
		if (*fmt == '*') {
			int w = va_arg(ap, int);
			if (w < 0) {
				left = 1;
				w = w == INT32_MIN ? INT32_MAX : -w;
			}
			width = w > FMT_WIDTH_MAX ? FMT_WIDTH_MAX : (unsigned)w;
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9') {
			width = width * 10 + (unsigned)(*fmt++ - '0');
			if (width > FMT_WIDTH_MAX)
				width = FMT_WIDTH_MAX;
		}
		if (*fmt == '.') {
			has_prec = 1;
			fmt++;
			if (*fmt == '*') {
				int p = va_arg(ap, int);
				prec = p < 0 ? 0 : (size_t)p;
				if (p < 0)
					has_prec = 0;
				fmt++;
			} else {
				while (*fmt >= '0' && *fmt <= '9') {
					prec = prec * 10 + (size_t)(*fmt++ - '0');
					if (prec > 1u << 20)
						prec = 1u << 20;
				}
			}
		}
		while (*fmt == 'l') {
			longs++;
			fmt++;
		}
		if (*fmt == 'z') {
			longs = 2;
			fmt++;
		}
		char pad = (zero && !left) ? '0' : ' ';
		switch (*fmt) {
		case 'd':
		case 'i': {
			int64_t v = longs ? va_arg(ap, long long) : va_arg(ap, int);
			uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
			size_t d = fmt_u64(num + 1, mag);
			if (v < 0) {
				if (pad == '0') {
					put(&o, '-');
					put_padded(&o, num + 1, d, width ? width - 1 : 0, left, pad);
				} else {
					num[0] = '-';
					put_padded(&o, num, d + 1, width, left, pad);
				}
			} else {
				put_padded(&o, num + 1, d, width, left, pad);
			}
			break;
		}
		case 'u': {
			uint64_t v = longs ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
			len = fmt_u64(num, v);
			put_padded(&o, num, len, width, left, pad);
			break;
		}
		case 'x':
		case 'X': {
			uint64_t v = longs ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
			len = fmt_hex_case(num, v, 1, *fmt == 'X');
			put_padded(&o, num, len, width, left, pad);
			break;
		}
		case 'p': {
			uint64_t v = (uint64_t)(uintptr_t)va_arg(ap, void *);
			num[0] = '0';
			num[1] = 'x';
			len = 2 + fmt_hex_case(num + 2, v, 1, 0);
			put_padded(&o, num, len, width, left, ' ');
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (s == NULL)
				s = "(null)";
			len = 0;
			while ((!has_prec || len < prec) && s[len] != '\0')
				len++;
			put_padded(&o, s, len, width, left, ' ');
			break;
		}
		case 'c':
			num[0] = (char)va_arg(ap, int);
			put_padded(&o, num, 1, width, left, ' ');
			break;
		case '%':
			put(&o, '%');
			break;
		default:
			/* Unknown or truncated conversion: copy it out as written. */
			while (start < fmt)
				put(&o, *start++);
			if (*fmt == '\0')
				continue;
			put(&o, *fmt);
			break;
		}
		fmt++;
	}
	if (cap > 0)
		buf[o.n < cap ? o.n : cap - 1] = '\0';
	return o.n > 0x7fffffff ? 0x7fffffff : (int)o.n;
}

int fmt_snprintf(char *buf, size_t cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = fmt_vsnprintf(buf, cap, fmt, ap);
	va_end(ap);
	return n;
}
