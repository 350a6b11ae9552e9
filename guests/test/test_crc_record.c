#include <string.h>

#include "crc32.h"
#include "harness.h"
#include "record.h"

/* crc32_ref is the textbook bit-at-a-time CRC-32, to check the table. */
static uint32_t crc32_ref(const uint8_t *p, size_t n)
{
	uint32_t crc = 0xFFFFFFFFu;

	for (size_t i = 0; i < n; i++) {
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
	}
	return ~crc;
}

static void test_crc(void)
{
	uint8_t buf[1024];

	CHECK(crc32_update(0, "123456789", 9) == 0xCBF43926u, "check value %08x",
	      crc32_update(0, "123456789", 9));
	CHECK(crc32_update(0, "", 0) == 0, "empty input");
	CHECK(crc32_update(0, "The quick brown fox jumps over the lazy dog", 43) == 0x414FA339u,
	      "fox");
	for (int i = 0; i < 2000; i++) {
		size_t n = (size_t)(test_rand() % sizeof(buf)), cut = n ? (size_t)(test_rand() % n) : 0;
		for (size_t k = 0; k < n; k++)
			buf[k] = (uint8_t)test_rand();
		uint32_t want = crc32_ref(buf, n);
		CHECK(crc32_update(0, buf, n) == want, "random buffer of %zu bytes", n);
		CHECK(crc32_update(crc32_update(0, buf, cut), buf + cut, n - cut) == want,
		      "incremental at %zu of %zu", cut, n);
	}
}

static void test_records(void)
{
	uint8_t r[RECORD_SIZE], r2[RECORD_SIZE], zero[RECORD_SIZE] = { 0 };
	static const uint64_t seqs[] = { 0, 1, 2, 63, 64, 0xFFFFFFFFull, 0x100000000ull, UINT64_MAX };

	for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
		uint64_t s = seqs[i];
		record_fill(r, s);
		CHECK(record_check(r, s) == RECORD_OK, "seq %lu round trip", (unsigned long)s);
		CHECK(record_check(r, s + 1) == RECORD_BAD_SEQ, "seq %lu read as %lu",
		      (unsigned long)s, (unsigned long)(s + 1));
		record_fill(r2, s ^ 1);
		CHECK(memcmp(r + 16, r2 + 16, 492) != 0, "payloads of %lu and %lu differ",
		      (unsigned long)s, (unsigned long)(s ^ 1));
	}
	CHECK(record_check(zero, 0) == RECORD_BAD_MAGIC, "a zero sector is not a record");

	/* Every single-bit flip anywhere in the sector is caught. */
	record_fill(r, 42);
	for (int bit = 0; bit < RECORD_SIZE * 8; bit++) {
		memcpy(r2, r, RECORD_SIZE);
		r2[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		CHECK(record_check(r2, 42) != RECORD_OK, "bit %d flipped went unnoticed", bit);
	}
	/* A version bump is named as such. */
	memcpy(r2, r, RECORD_SIZE);
	r2[4] = 2;
	CHECK(record_check(r2, 42) == RECORD_BAD_VERSION, "version");
	/* A consistent CRC over the wrong payload: only the payload check sees it. */
	memcpy(r2, r, RECORD_SIZE);
	r2[100] ^= 0x55;
	uint32_t c = crc32_update(0, r2, 508);
	for (int i = 0; i < 4; i++)
		r2[508 + i] = (uint8_t)(c >> (8 * i));
	CHECK(record_check(r2, 42) == RECORD_BAD_PAYLOAD, "payload with a matching crc");
	/* A torn write (first half new record, second half old) is caught. */
	record_fill(r2, 43);
	memcpy(r2 + 256, r + 256, 256);
	CHECK(record_check(r2, 43) == RECORD_BAD_CRC, "torn sector");
	/* Deterministic: the same seq always gives the same bytes. */
	record_fill(r2, 42);
	CHECK(memcmp(r, r2, RECORD_SIZE) == 0, "record_fill is deterministic");
	for (int st = RECORD_OK; st <= RECORD_BAD_PAYLOAD; st++)
		CHECK(strcmp(record_status_str((enum record_status)st), "unknown status") != 0,
		      "status %d has a name", st);
}

void test_crc_record(void)
{
	test_crc();
	test_records();
}
