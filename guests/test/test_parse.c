#include <string.h>

#include "harness.h"
#include "parse.h"

static int u64(const char *s, uint64_t *v)
{
	return parse_u64(s, strlen(s), v);
}

static int i64(const char *s, int64_t *v)
{
	return parse_i64(s, strlen(s), v);
}

static int ip(const char *s, uint32_t *v)
{
	return parse_ipv4(s, strlen(s), v);
}

void test_parse(void)
{
	static const struct {
		const char *in;
		int ok;
		uint64_t want;
	} u[] = {
		{ "0", 1, 0 },
		{ "7", 1, 7 },
		{ "007", 1, 7 },
		{ "18446744073709551615", 1, UINT64_MAX },
		{ "18446744073709551616", 0, 0 },
		{ "99999999999999999999", 0, 0 },
		{ "0x0", 1, 0 },
		{ "0xFFFFffffFFFFffff", 1, UINT64_MAX },
		{ "0x10000000000000000", 0, 0 },
		{ "0x", 0, 0 },
		{ "0xg", 0, 0 },
		{ "", 0, 0 },
		{ "12a", 0, 0 },
		{ "a12", 0, 0 },
		{ "-1", 0, 0 },
		{ "+1", 0, 0 },
		{ " 1", 0, 0 },
		{ "1 ", 0, 0 },
		{ "ff", 0, 0 },
	};
	static const struct {
		const char *in;
		int ok;
		int64_t want;
	} s[] = {
		{ "0", 1, 0 },
		{ "-0", 1, 0 },
		{ "-1", 1, -1 },
		{ "9223372036854775807", 1, INT64_MAX },
		{ "9223372036854775808", 0, 0 },
		{ "-9223372036854775808", 1, INT64_MIN },
		{ "-9223372036854775809", 0, 0 },
		{ "-", 0, 0 },
		{ "--1", 0, 0 },
		{ "", 0, 0 },
		{ "1-", 0, 0 },
		{ "0x10", 0, 0 },
		{ "+5", 0, 0 },
	};
	static const struct {
		const char *in;
		int ok;
		uint32_t want;
	} a[] = {
		{ "10.0.2.15", 1, 0x0A00020F },
		{ "0.0.0.0", 1, 0 },
		{ "255.255.255.255", 1, 0xFFFFFFFF },
		{ "001.002.003.004", 1, 0x01020304 },
		{ "256.0.0.1", 0, 0 },
		{ "1.2.3", 0, 0 },
		{ "1.2.3.4.", 0, 0 },
		{ "1.2.3.4.5", 0, 0 },
		{ "1..3.4", 0, 0 },
		{ ".1.2.3", 0, 0 },
		{ "1234.1.1.1", 0, 0 },
		{ "1.2.3.4 ", 0, 0 },
		{ "a.b.c.d", 0, 0 },
		{ "", 0, 0 },
	};
	uint64_t uv;
	int64_t sv;
	uint32_t av;

	for (size_t i = 0; i < sizeof(u) / sizeof(u[0]); i++) {
		uv = 12345;
		int ok = u64(u[i].in, &uv);
		CHECK(ok == u[i].ok && (!ok || uv == u[i].want), "parse_u64(\"%s\") = %d %lu",
		      u[i].in, ok, (unsigned long)uv);
	}
	for (size_t i = 0; i < sizeof(s) / sizeof(s[0]); i++) {
		sv = 12345;
		int ok = i64(s[i].in, &sv);
		CHECK(ok == s[i].ok && (!ok || sv == s[i].want), "parse_i64(\"%s\") = %d %ld",
		      s[i].in, ok, (long)sv);
	}
	for (size_t i = 0; i < sizeof(a) / sizeof(a[0]); i++) {
		av = 12345;
		int ok = ip(a[i].in, &av);
		CHECK(ok == a[i].ok && (!ok || av == a[i].want), "parse_ipv4(\"%s\") = %d %x",
		      a[i].in, ok, av);
	}
	/* Length-delimited: bytes beyond n are not looked at. */
	CHECK(parse_u64("123456", 3, &uv) && uv == 123, "prefix of a longer string");
	CHECK(parse_ipv4("1.2.3.45xyz", 7, &av) && av == 0x01020304, "prefix \"1.2.3.4\" got %x", av);
	CHECK(!parse_ipv4("1.2.3.4", 6, &av), "prefix \"1.2.3.\" must fail");
	/* Round trip of random values through snprintf. */
	for (int i = 0; i < 10000; i++) {
		char buf[32];
		uint64_t v = test_rand() >> (test_rand() % 64);
		int64_t w = (int64_t)test_rand() >> (test_rand() % 64);
		snprintf(buf, sizeof(buf), "%lu", (unsigned long)v);
		CHECK(u64(buf, &uv) && uv == v, "round trip %s", buf);
		snprintf(buf, sizeof(buf), "0x%lx", (unsigned long)v);
		CHECK(u64(buf, &uv) && uv == v, "round trip %s", buf);
		snprintf(buf, sizeof(buf), "%ld", (long)w);
		CHECK(i64(buf, &sv) && sv == w, "round trip %s", buf);
	}

	CHECK(str_eq("abc", "abc") && !str_eq("abc", "abd") && !str_eq("ab", "abc") &&
		      !str_eq("abc", "ab") && str_eq("", ""),
	      "str_eq");

	/* Boot-info parameters: bounded, first match wins, garbage ignored. */
	static struct boot_info bi;
	memset(&bi, 0, sizeof(bi));
	bi.nr_params = 4;
	strcpy(bi.params[0].key, "limit");
	strcpy(bi.params[0].value, "10");
	strcpy(bi.params[1].key, "limit");
	strcpy(bi.params[1].value, "20");
	memset(bi.params[2].key, 'k', FTCKPT_PARAM_KEY); /* unterminated key */
	strcpy(bi.params[2].value, "x");
	strcpy(bi.params[3].key, "mode");
	memset(bi.params[3].value, 'v', FTCKPT_PARAM_VALUE); /* unterminated value */
	const char *p = bootinfo_param(&bi, "limit");
	CHECK(p != NULL && strcmp(p, "10") == 0, "first limit wins, got %s", p ? p : "NULL");
	CHECK(bootinfo_param(&bi, "mode") == NULL, "unterminated value must be ignored");
	CHECK(bootinfo_param(&bi, "lim") == NULL, "prefix of a key must not match");
	CHECK(bootinfo_param(&bi, "limitx") == NULL, "longer key must not match");
	char longkey[FTCKPT_PARAM_KEY + 1];
	memset(longkey, 'k', FTCKPT_PARAM_KEY);
	longkey[FTCKPT_PARAM_KEY] = 0;
	CHECK(bootinfo_param(&bi, longkey) == NULL, "a 32-byte key cannot match an unterminated one");
	bi.nr_params = 0xFFFFFFFF; /* clamped to FTCKPT_MAX_PARAMS: no overrun under ASan */
	CHECK(bootinfo_param(&bi, "nope") == NULL, "absurd nr_params");
	bi.nr_params = 0;
	CHECK(bootinfo_param(&bi, "limit") == NULL, "nr_params=0 hides all");

	bi.nr_devices = 3;
	bi.devices[0].kind = FTCKPT_DEV_VIRTIO_NET;
	bi.devices[0].io_base = 0xc000;
	bi.devices[1].kind = FTCKPT_DEV_VIRTIO_BLK;
	bi.devices[1].io_base = 0xc040;
	bi.devices[2].kind = FTCKPT_DEV_VIRTIO_BLK;
	bi.devices[2].io_base = 0xc080;
	const struct bootinfo_device *d = bootinfo_device(&bi, FTCKPT_DEV_VIRTIO_BLK);
	CHECK(d != NULL && d->io_base == 0xc040, "first blk device");
	CHECK(bootinfo_device(&bi, 0) == NULL, "kind 0 is invalid");
	bi.nr_devices = 1;
	CHECK(bootinfo_device(&bi, FTCKPT_DEV_VIRTIO_BLK) == NULL, "beyond nr_devices");
	bi.nr_devices = 1000;
	CHECK(bootinfo_device(&bi, 99) == NULL, "absurd nr_devices");
}
