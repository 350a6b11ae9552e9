/*
 * The kv guest's disk format (pure/kvtable.h): tables round-trip through
 * kvt_encode/kvt_decode (empty, random, full with every key and value at
 * its longest); every bit flip, wrong magic or version, and every
 * truncation is refused; headers and entry areas forged with valid CRCs
 * (so only the structural checks can catch them) probe every count,
 * length and byte bound; random mutations never load an invalid table.
 * The journal sector round-trips and refuses the same.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "crc32.h"
#include "harness.h"
#include "kvtable.h"

static struct kv_store *a, *b;

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* forge writes a copy with the given header fields around the entry area
 * e[0, n) and correct CRCs; it returns the copy's length (whole sectors). */
static size_t forge(uint8_t *buf, uint32_t magic, uint32_t version, uint32_t count,
		    uint32_t bytes, uint64_t updates, const uint8_t *e, size_t n)
{
	size_t len = (KVT_HDR_SIZE + n + KVD_SECTOR - 1) / KVD_SECTOR * KVD_SECTOR;

	memset(buf, 0, len);
	put32(buf, magic);
	put32(buf + 4, version);
	put32(buf + 8, count);
	put32(buf + 12, bytes);
	put32(buf + 16, (uint32_t)updates);
	put32(buf + 20, (uint32_t)(updates >> 32));
	memcpy(buf + KVT_HDR_SIZE, e, n);
	put32(buf + 24, crc32_update(0, e, n));
	put32(buf + 28, crc32_update(0, buf, 28));
	return len;
}

/* decode runs kvt_decode on a heap copy of exactly buf[0, len), so that
 * AddressSanitizer sees any read past what the decoder was given. */
static enum kvt_status decode(struct kv_store *s, const uint8_t *buf, size_t len)
{
	uint8_t *exact = malloc(len ? len : 1);
	enum kvt_status st;

	memcpy(exact, buf, len);
	st = kvt_decode(s, exact, len);
	free(exact);
	return st;
}

/* reseal recomputes both CRCs of the copy in buf from its own lengths
 * (bounded by cap), as a writer that means it would. */
static void reseal(uint8_t *buf, size_t cap)
{
	uint32_t bytes = (uint32_t)buf[12] | (uint32_t)buf[13] << 8 | (uint32_t)buf[14] << 16 |
			 (uint32_t)buf[15] << 24;
	size_t n = bytes <= cap - KVT_HDR_SIZE ? bytes : cap - KVT_HDR_SIZE;

	put32(buf + 24, crc32_update(0, buf + KVT_HDR_SIZE, n));
	put32(buf + 28, crc32_update(0, buf, 28));
}

/* same_table says whether x and y hold the same keys with the same values
 * and the same update count. */
static bool same_table(const struct kv_store *x, const struct kv_store *y)
{
	if (x->count != y->count || x->updates != y->updates)
		return false;
	for (unsigned i = 0; i < KV_SLOTS; i++) {
		const struct kv_entry *e = &x->slot[i], *f;
		if (e->klen == 0)
			continue;
		f = kv_get(y, e->key, e->klen);
		if (f == NULL || f->vlen != e->vlen || memcmp(f->val, e->val, e->vlen) != 0)
			return false;
	}
	return true;
}

/* valid_store checks the invariants a loaded store must keep. */
static bool valid_store(const struct kv_store *s)
{
	uint32_t n = 0;

	for (unsigned i = 0; i < KV_SLOTS; i++) {
		const struct kv_entry *e = &s->slot[i];
		if (e->klen == 0)
			continue;
		n++;
		if (e->klen > KV_KEY_MAX || e->vlen == 0 || e->vlen > KV_VAL_MAX)
			return false;
		if (kv_get(s, e->key, e->klen) != e)
			return false;
	}
	return n == s->count && n <= KV_MAX_KEYS && s->seq == 0;
}

static void exec(struct kv_store *s, const char *req)
{
	char out[KV_REPLY_MAX];

	kv_execute(s, (const uint8_t *)req, strlen(req), out, sizeof(out));
}

/* roundtrip encodes s, decodes it into b, and checks they agree. */
static size_t roundtrip(const struct kv_store *s, uint8_t *buf, const char *what)
{
	size_t len = kvt_encode(s, buf, KVT_MAX_SECTORS * KVD_SECTOR);
	enum kvt_status st;
	struct kvt_header h;

	CHECK(len != 0 && len % KVD_SECTOR == 0 && len <= KVT_MAX_SECTORS * KVD_SECTOR,
	      "%s: encoded length %zu", what, len);
	if (len == 0)
		return 0;
	CHECK(kvt_header(buf, len, &h) == KVT_OK && h.count == s->count &&
		      h.updates == s->updates && h.sectors * KVD_SECTOR == len,
	      "%s: header count %u updates %lu sectors %u", what, h.count,
	      (unsigned long)h.updates, h.sectors);
	st = kvt_decode(b, buf, len);
	CHECK(st == KVT_OK, "%s: decode: %s", what, kvt_status_str(st));
	CHECK(same_table(s, b) && valid_store(b), "%s: decoded table differs", what);
	/* The decoded table encodes to a table that decodes the same. */
	{
		static uint8_t again[KVT_MAX_SECTORS * KVD_SECTOR];
		size_t len2 = kvt_encode(b, again, sizeof(again));
		CHECK(len2 == len && kvt_decode(b, again, len2) == KVT_OK && same_table(s, b),
		      "%s: second round", what);
	}
	return len;
}

static void test_roundtrip(void)
{
	static uint8_t buf[KVT_MAX_SECTORS * KVD_SECTOR], buf2[KVT_MAX_SECTORS * KVD_SECTOR];
	char req[200];
	size_t len;

	/* Empty: one sector, and the guest's "new table". */
	kv_init(a);
	len = roundtrip(a, buf, "empty");
	CHECK(len == KVD_SECTOR, "empty table is %zu bytes", len);

	/* The update count survives, the reply sequence does not. */
	exec(a, "SET x 1");
	exec(a, "INCR x");
	exec(a, "GET x");
	exec(a, "INCR nope nope");
	CHECK(a->updates == 2 && a->seq == 4, "updates %lu seq %lu", (unsigned long)a->updates,
	      (unsigned long)a->seq);
	len = kvt_encode(a, buf, sizeof(buf));
	CHECK(kvt_decode(b, buf, len) == KVT_OK && b->updates == 2 && b->seq == 0 &&
		      kv_get(b, "x", 1) != NULL && memcmp(kv_get(b, "x", 1)->val, "2", 1) == 0,
	      "small table");
	/* Big update counts use all 64 bits. */
	a->updates = 0x123456789abcdef0ull;
	roundtrip(a, buf, "big update count");

	/* Full, every key and value at its longest: exactly KVT_MAX_BYTES. */
	kv_init(a);
	for (int i = 0; i < KV_MAX_KEYS; i++) {
		snprintf(req, sizeof(req), "SET %032d %064d", i, i);
		exec(a, req);
	}
	CHECK(a->count == KV_MAX_KEYS && a->updates == KV_MAX_KEYS, "full: count %u", a->count);
	len = roundtrip(a, buf, "full, longest");
	CHECK(len == KVT_MAX_SECTORS * KVD_SECTOR && KVT_MAX_SECTORS == 50 &&
		      KVT_MAX_BYTES == 25120,
	      "full table is %zu bytes, %d sectors", len, KVT_MAX_SECTORS);
	CHECK(kvt_encode(a, buf2, len - 1) == 0, "a short buffer is refused");
	CHECK(kvt_encode(a, buf2, len) == len && memcmp(buf, buf2, len) == 0,
	      "encoding is deterministic");

	/* Full, every key and value at its shortest. */
	kv_init(a);
	for (int i = 0; i < KV_MAX_KEYS; i++) {
		snprintf(req, sizeof(req), "SET %c%c %c", 0x21 + i % 94, 0x21 + i / 94, 0x20 + i % 95);
		exec(a, req);
	}
	CHECK(a->count == KV_MAX_KEYS, "short full: count %u", a->count);
	len = roundtrip(a, buf, "full, shortest");
	CHECK(len == (KVT_HDR_SIZE + KV_MAX_KEYS * 5 + KVD_SECTOR - 1) / KVD_SECTOR * KVD_SECTOR,
	      "short full table is %zu bytes", len);

	/* Random tables through the protocol, including values with spaces. */
	for (int round = 0; round < 300; round++) {
		int ops = (int)(test_rand() % 400);
		kv_init(a);
		for (int i = 0; i < ops; i++) {
			int klen = 1 + (int)(test_rand() % KV_KEY_MAX);
			int vlen = 1 + (int)(test_rand() % KV_VAL_MAX);
			char key[KV_KEY_MAX + 1], val[KV_VAL_MAX + 1];
			for (int k = 0; k < klen; k++)
				key[k] = (char)(0x21 + test_rand() % (round % 2 ? 3 : 94));
			key[klen] = 0;
			for (int k = 0; k < vlen; k++)
				val[k] = (char)(0x20 + test_rand() % 95);
			val[vlen] = 0;
			if (test_rand() % 3 == 0)
				snprintf(req, sizeof(req), "INCR %s", key);
			else
				snprintf(req, sizeof(req), "SET %s %s", key, val);
			exec(a, req);
		}
		roundtrip(a, buf, "random");
		if (failures > 50)
			return;
	}
}

static void test_corrupt(void)
{
	static uint8_t buf[KVT_MAX_SECTORS * KVD_SECTOR], bad[KVT_MAX_SECTORS * KVD_SECTOR];
	char req[200];
	struct kvt_header h;
	size_t len, used;

	kv_init(a);
	for (int i = 0; i < 40; i++) {
		snprintf(req, sizeof(req), "SET key%d value number %d", i, i * 7);
		exec(a, req);
	}
	len = kvt_encode(a, buf, sizeof(buf));
	CHECK(kvt_header(buf, len, &h) == KVT_OK, "header");
	used = KVT_HDR_SIZE + h.bytes;

	/* Every bit that means something is guarded; padding is not read. */
	for (size_t bit = 0; bit < len * 8; bit++) {
		enum kvt_status st;
		memcpy(bad, buf, len);
		bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		st = kvt_decode(b, bad, len);
		if (bit / 8 < used)
			CHECK(st != KVT_OK && b->count == 0, "bit %zu flipped went unnoticed", bit);
		else
			CHECK(st == KVT_OK, "bit %zu of the padding: %s", bit, kvt_status_str(st));
	}
	/* Each field names its own failure. */
	memcpy(bad, buf, len);
	bad[0] ^= 1;
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_MAGIC, "magic");
	memset(bad, 0, len);
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_MAGIC, "a zero disk is no table");
	memcpy(bad, buf, len);
	put32(bad + 4, KVT_VERSION + 1);
	reseal(bad, len);
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_VERSION, "version");
	memcpy(bad, buf, len);
	bad[29] ^= 0x80;
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_HDR_CRC, "header crc");
	memcpy(bad, buf, len);
	bad[17] ^= 1; /* the update count, under the header CRC */
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_HDR_CRC, "update count");
	memcpy(bad, buf, len);
	bad[24] ^= 1; /* the stored entry CRC is under the header CRC */
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_HDR_CRC, "entry crc, header not resealed");
	put32(bad + 28, crc32_update(0, bad, 28));
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_CRC, "entry crc");
	memcpy(bad, buf, len);
	bad[KVT_HDR_SIZE + 5] ^= 0x20;
	CHECK(kvt_decode(b, bad, len) == KVT_BAD_CRC, "entry byte");
	/* A torn write: the header sector new, the rest old. */
	exec(a, "SET key19 a different and longer value than before");
	{
		static uint8_t newer[KVT_MAX_SECTORS * KVD_SECTOR];
		size_t nlen = kvt_encode(a, newer, sizeof(newer));
		CHECK(nlen == len, "same size: %zu %zu", nlen, len);
		memcpy(bad, buf, len);
		memcpy(bad, newer, 16);
		CHECK(kvt_decode(b, bad, len) == KVT_BAD_HDR_CRC, "torn header");
		memcpy(bad, newer, KVD_SECTOR);
		memcpy(bad + KVD_SECTOR, buf + KVD_SECTOR, len - KVD_SECTOR);
		CHECK(len > KVD_SECTOR && kvt_decode(b, bad, len) == KVT_BAD_CRC, "torn table");
	}

	/* A failed decode leaves the store empty, whatever it held. */
	kv_init(b);
	exec(b, "SET keep me");
	memcpy(bad, buf, len);
	bad[40] ^= 4;
	CHECK(kvt_decode(b, bad, len) != KVT_OK && b->count == 0 && b->updates == 0 &&
		      kv_get(b, "keep", 4) == NULL,
	      "store after a failed decode");

	/* Every truncation, in a buffer of exactly that size (ASan sees any
	 * read past it). */
	for (size_t n = 0; n < len; n++) {
		uint8_t *cut = malloc(n ? n : 1);
		enum kvt_status st;
		memcpy(cut, buf, n);
		st = kvt_decode(b, cut, n);
		if (n < KVT_HDR_SIZE)
			CHECK(st == KVT_SHORT, "%zu bytes: %s", n, kvt_status_str(st));
		else if (n < used)
			CHECK(st == KVT_TRUNCATED, "%zu bytes: %s", n, kvt_status_str(st));
		else
			CHECK(st == KVT_OK, "%zu bytes (all used ones): %s", n, kvt_status_str(st));
		free(cut);
	}
}

/* entry appends one entry with the given lengths (klen key bytes of kc,
 * vlen value bytes of vc) to e at *n. */
static void entry(uint8_t *e, size_t *n, unsigned klen, unsigned vlen, uint8_t kc, uint8_t vc)
{
	e[(*n)++] = (uint8_t)klen;
	e[(*n)++] = (uint8_t)vlen;
	memset(e + *n, kc, klen);
	*n += klen;
	memset(e + *n, vc, vlen);
	*n += vlen;
}

static void test_forged(void)
{
	static uint8_t buf[2 * KVT_MAX_SECTORS * KVD_SECTOR], e[2 * KVT_MAX_BYTES];
	size_t n, len;
	enum kvt_status st;

	/* Every key and value length bound, one entry each. */
	static const unsigned klens[] = { 0, 1, 2, KV_KEY_MAX - 1, KV_KEY_MAX, KV_KEY_MAX + 1, 255 };
	static const unsigned vlens[] = { 0, 1, 2, KV_VAL_MAX - 1, KV_VAL_MAX, KV_VAL_MAX + 1, 255 };
	for (size_t i = 0; i < sizeof(klens) / sizeof(klens[0]); i++)
		for (size_t j = 0; j < sizeof(vlens) / sizeof(vlens[0]); j++) {
			bool ok = klens[i] >= 1 && klens[i] <= KV_KEY_MAX && vlens[j] >= 1 &&
				  vlens[j] <= KV_VAL_MAX;
			n = 0;
			entry(e, &n, klens[i], vlens[j], 'k', 'v');
			/* count 1 with the entry's true size, whether or not the
			 * header bounds allow it, and with a bound-respecting size */
			len = forge(buf, KVT_MAGIC, KVT_VERSION, 1, (uint32_t)n, 9, e, n);
			st = decode(b, buf, len);
			CHECK(ok ? st == KVT_OK : st != KVT_OK, "klen %u vlen %u: %s", klens[i], vlens[j],
			      kvt_status_str(st));
			if (ok) {
				const struct kv_entry *got = kv_get(b, (const char *)e + 2, klens[i]);
				CHECK(b->count == 1 && b->updates == 9 && got != NULL &&
					      got->vlen == vlens[j] && got->val[0] == 'v',
				      "klen %u vlen %u loaded", klens[i], vlens[j]);
				continue;
			}
			CHECK(st == (n >= 4 && n <= KVT_ENTRY_MAX ? KVT_BAD_ENTRY : KVT_BAD_LENGTH),
			      "klen %u vlen %u: %s", klens[i], vlens[j], kvt_status_str(st));
			/* With a count the header's bounds allow (the entry first,
			 * then valid ones), the entry check itself must refuse it. */
			if (n >= 4) {
				uint32_t c = 1;
				while (n > (size_t)KVT_ENTRY_MAX * c || 4 * c > n) {
					entry(e, &n, 1, 1, (uint8_t)('A' + c), 'v');
					c++;
				}
				len = forge(buf, KVT_MAGIC, KVT_VERSION, c, (uint32_t)n, 9, e, n);
				st = decode(b, buf, len);
				CHECK(st == KVT_BAD_ENTRY, "klen %u vlen %u among %u entries: %s", klens[i],
				      vlens[j], c, kvt_status_str(st));
			}
		}

	/* Header counts and lengths out of bounds, with valid CRCs. */
	n = 0;
	for (int i = 0; i < 3; i++)
		entry(e, &n, 3, 3, (uint8_t)('a' + i), 'v');
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, (uint32_t)n, 1, e, n);
	CHECK(decode(b, buf, len) == KVT_OK && b->count == 3, "three entries");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 0, 0, 0, e, 0);
	CHECK(decode(b, buf, len) == KVT_OK && b->count == 0, "count 0 bytes 0");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 0, 8, 0, e, 8);
	CHECK(decode(b, buf, len) == KVT_BAD_LENGTH, "count 0 with bytes");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, KV_MAX_KEYS + 1, (KV_MAX_KEYS + 1) * 4, 0, e,
		    (KV_MAX_KEYS + 1) * 4);
	CHECK(decode(b, buf, len) == KVT_BAD_LENGTH, "count over KV_MAX_KEYS");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 0xFFFFFFFFu, 0xFFFFFFFFu, 0, e, n);
	CHECK(decode(b, buf, len) == KVT_BAD_LENGTH, "count and bytes 2^32-1");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, 0xFFFFFFFFu, 0, e, n);
	CHECK(decode(b, buf, len) == KVT_BAD_LENGTH, "bytes 2^32-1");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, 11, 0, e, 11);
	CHECK(decode(b, buf, len) == KVT_BAD_LENGTH, "bytes below 4 per entry");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 1, KVT_ENTRY_MAX + 1, 0, e, KVT_ENTRY_MAX + 1);
	CHECK(decode(b, buf, len) == KVT_BAD_LENGTH, "bytes above 98 per entry");
	/* A header whose bytes outrun the buffer it came in. */
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, (uint32_t)n, 0, e, n);
	CHECK(decode(b, buf, KVT_HDR_SIZE + n - 1) == KVT_TRUNCATED, "bytes past the buffer");

	/* Truncated counts: the header claims more or fewer entries than the
	 * area holds (bytes within the per-entry bounds either way). */
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 4, (uint32_t)n, 0, e, n);
	CHECK(decode(b, buf, len) == KVT_BAD_ENTRY, "count one too many");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 2, (uint32_t)n, 0, e, n);
	CHECK(decode(b, buf, len) == KVT_BAD_ENTRY, "count one too few");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, (uint32_t)n - 1, 0, e, n - 1);
	CHECK(decode(b, buf, len) == KVT_BAD_ENTRY, "last entry cut by one byte");
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, (uint32_t)n + 1, 0, e, n + 1);
	CHECK(decode(b, buf, len) == KVT_BAD_ENTRY, "a stray byte after the entries");
	{
		size_t m = n;
		e[m++] = 5; /* a fourth entry's lengths, and nothing of it */
		len = forge(buf, KVT_MAGIC, KVT_VERSION, 4, (uint32_t)m, 0, e, m);
		CHECK(decode(b, buf, len) == KVT_BAD_ENTRY &&
			      decode(b, buf, KVT_HDR_SIZE + m) == KVT_BAD_ENTRY,
		      "half an entry");
		e[m++] = 5;
		e[m++] = 'z';
		e[m++] = 'z';
		len = forge(buf, KVT_MAGIC, KVT_VERSION, 4, (uint32_t)m, 0, e, m);
		CHECK(decode(b, buf, len) == KVT_BAD_ENTRY &&
			      decode(b, buf, KVT_HDR_SIZE + m) == KVT_BAD_ENTRY,
		      "an entry past the end");
	}
	/* Every count from 0 to KV_MAX_KEYS + 1 over the same full area. */
	n = 0;
	for (int i = 0; i < KV_MAX_KEYS; i++) {
		char key[8];
		snprintf(key, sizeof(key), "k%03d", i);
		e[n++] = 4;
		e[n++] = 1;
		memcpy(e + n, key, 4);
		n += 4;
		e[n++] = 'v';
	}
	for (uint32_t c = 0; c <= KV_MAX_KEYS + 1; c++) {
		len = forge(buf, KVT_MAGIC, KVT_VERSION, c, (uint32_t)n, 0, e, n);
		st = decode(b, buf, len);
		CHECK(c == KV_MAX_KEYS ? st == KVT_OK && b->count == KV_MAX_KEYS : st != KVT_OK,
		      "count %u over %d entries: %s", c, KV_MAX_KEYS, kvt_status_str(st));
	}

	/* Bytes: keys are 0x21..0x7e, values 0x20..0x7e. */
	for (int c = 0; c < 256; c++) {
		bool kok = c > 0x20 && c <= 0x7e, vok = c >= 0x20 && c <= 0x7e;
		n = 0;
		entry(e, &n, 2, 2, 'k', 'v');
		e[3] = (uint8_t)c;
		len = forge(buf, KVT_MAGIC, KVT_VERSION, 1, (uint32_t)n, 0, e, n);
		st = decode(b, buf, len);
		CHECK(kok ? st == KVT_OK : st == KVT_BAD_BYTE, "key byte %#x: %s", c, kvt_status_str(st));
		n = 0;
		entry(e, &n, 2, 2, 'k', 'v');
		e[5] = (uint8_t)c;
		len = forge(buf, KVT_MAGIC, KVT_VERSION, 1, (uint32_t)n, 0, e, n);
		st = decode(b, buf, len);
		CHECK(vok ? st == KVT_OK : st == KVT_BAD_BYTE, "value byte %#x: %s", c,
		      kvt_status_str(st));
	}

	/* The same key twice, adjacent or not, with different values. */
	n = 0;
	entry(e, &n, 3, 1, 'd', '1');
	entry(e, &n, 3, 1, 'e', '2');
	entry(e, &n, 3, 2, 'd', '3');
	len = forge(buf, KVT_MAGIC, KVT_VERSION, 3, (uint32_t)n, 0, e, n);
	CHECK(decode(b, buf, len) == KVT_DUPLICATE && b->count == 0, "duplicate key");
}

/* test_mutations flips, overwrites and resizes a valid copy at random and
 * reseals its CRCs, so the structural checks meet arbitrary contents:
 * decode must never read out of bounds, and whatever it accepts must be
 * a valid store that round-trips. */
static void test_mutations(void)
{
	static uint8_t buf[KVT_MAX_SECTORS * KVD_SECTOR], m[KVT_MAX_SECTORS * KVD_SECTOR];
	char req[200];
	size_t len;
	unsigned accepted = 0;

	kv_init(a);
	for (int i = 0; i < 40; i++) {
		snprintf(req, sizeof(req), "SET k%d %.*s", i, 1 + i % 60,
			 "0123456789012345678901234567890123456789012345678901234567890123");
		exec(a, req);
	}
	len = kvt_encode(a, buf, sizeof(buf));
	for (int round = 0; round < 100000; round++) {
		size_t mlen = len, flips = 1 + test_rand() % 4;
		memcpy(m, buf, len);
		for (size_t f = 0; f < flips; f++) {
			size_t at = KVT_HDR_SIZE + test_rand() % (len - KVT_HDR_SIZE);
			switch (test_rand() % 4) {
			case 0:
				m[at] ^= (uint8_t)(1u << (test_rand() % 8));
				break;
			case 1:
				m[at] = (uint8_t)test_rand();
				break;
			case 2: /* a length field near the front: klen/vlen bytes */
				m[KVT_HDR_SIZE + test_rand() % 64] = (uint8_t)(test_rand() % 100);
				break;
			default: /* the header's count or bytes */
				m[8 + test_rand() % 8] = (uint8_t)test_rand();
				break;
			}
		}
		if (test_rand() % 8 == 0)
			mlen = KVT_HDR_SIZE + test_rand() % (len - KVT_HDR_SIZE);
		reseal(m, mlen);
		if (decode(b, m, mlen) == KVT_OK) {
			accepted++;
			CHECK(valid_store(b), "round %d: accepted an invalid store", round);
		} else {
			CHECK(b->count == 0, "round %d: a refused table left %u keys", round, b->count);
		}
		if (failures > 50)
			return;
	}
	CHECK(accepted > 0, "no mutation was ever a valid table: the test tests nothing");
}

static void test_journal(void)
{
	uint8_t j[KVD_SECTOR], bad[KVD_SECTOR];
	struct kvj_record r;

	kv_init(a);
	exec(a, "SET counter 41");
	exec(a, "GET counter");
	exec(a, "INCR counter");
	kvj_encode(a, j);
	CHECK(kvj_decode(j, sizeof(j), &r) == KVT_OK && r.seq == 3 && r.update == 2 &&
		      r.klen == 7 && memcmp(r.key, "counter", 7) == 0 && r.vlen == 2 &&
		      memcmp(r.val, "42", 2) == 0,
	      "journal of INCR: seq %lu update %lu", (unsigned long)r.seq, (unsigned long)r.update);
	/* Byte 16 is the update count, little-endian, as the tests read it. */
	CHECK(j[16] == 2 && j[17] == 0 && j[23] == 0, "update count at byte 16");
	exec(a, "SET counter ");
	exec(a, "INCR k k");
	exec(a, "SET another with spaces in it");
	kvj_encode(a, j);
	CHECK(kvj_decode(j, sizeof(j), &r) == KVT_OK && r.update == 3 && r.seq == 6 &&
		      r.vlen == 17 && memcmp(r.val, "with spaces in it", 17) == 0,
	      "journal of SET after refused requests");
	/* Longest key and value. */
	{
		char req[200];
		snprintf(req, sizeof(req), "SET %032d %064d", 7, 7);
		exec(a, req);
		kvj_encode(a, j);
		CHECK(kvj_decode(j, sizeof(j), &r) == KVT_OK && r.klen == KV_KEY_MAX &&
			      r.vlen == KV_VAL_MAX && r.val[KV_VAL_MAX - 1] == '7',
		      "longest entry");
	}
	for (size_t bit = 0; bit < sizeof(j) * 8; bit++) {
		memcpy(bad, j, sizeof(j));
		bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		CHECK(kvj_decode(bad, sizeof(bad), &r) != KVT_OK, "journal bit %zu", bit);
	}
	CHECK(kvj_decode(j, sizeof(j) - 1, &r) == KVT_SHORT, "short journal buffer");
	memset(bad, 0, sizeof(bad));
	CHECK(kvj_decode(bad, sizeof(bad), &r) == KVT_BAD_MAGIC, "zero sector");
	/* Forged with a valid CRC: lengths and bytes are still checked. */
	memcpy(bad, j, sizeof(j));
	bad[24] = KV_KEY_MAX + 1;
	put32(bad + 508, crc32_update(0, bad, 508));
	CHECK(kvj_decode(bad, sizeof(bad), &r) == KVT_BAD_ENTRY, "journal klen");
	memcpy(bad, j, sizeof(j));
	bad[25] = 0;
	put32(bad + 508, crc32_update(0, bad, 508));
	CHECK(kvj_decode(bad, sizeof(bad), &r) == KVT_BAD_ENTRY, "journal vlen 0");
	memcpy(bad, j, sizeof(j));
	bad[26] = ' ';
	put32(bad + 508, crc32_update(0, bad, 508));
	CHECK(kvj_decode(bad, sizeof(bad), &r) == KVT_BAD_BYTE, "journal key byte");
	memcpy(bad, j, sizeof(j));
	put32(bad + 4, KVJ_VERSION + 1);
	put32(bad + 508, crc32_update(0, bad, 508));
	CHECK(kvj_decode(bad, sizeof(bad), &r) == KVT_BAD_VERSION, "journal version");

	/* The layout: the journal follows the two copies. */
	CHECK(KVD_JOURNAL_BASE == 128 && kvd_journal_sector(1, 1000) == 129 &&
		      kvd_journal_sector(1000, 1000) == 128 && kvd_journal_sector(1999, 1000) == 1127 &&
		      kvd_journal_sector(5, 1) == 128,
	      "journal sectors");
	for (int st = KVT_OK; st <= KVT_DUPLICATE; st++)
		CHECK(strcmp(kvt_status_str((enum kvt_status)st), "unknown status") != 0,
		      "status %d has a name", st);
}

/* test_put covers kv_put and kv_get, the loader's way into the store. */
static void test_put(void)
{
	char k[KV_KEY_MAX + 1], v[KV_VAL_MAX + 1];

	memset(k, 'k', sizeof(k));
	memset(v, 'v', sizeof(v));
	kv_init(a);
	CHECK(kv_put(a, k, 0, v, 1) == -1 && kv_put(a, k, KV_KEY_MAX + 1, v, 1) == -1 &&
		      kv_put(a, k, 1, v, 0) == -1 && kv_put(a, k, 1, v, KV_VAL_MAX + 1) == -1 &&
		      a->count == 0,
	      "kv_put bounds");
	CHECK(kv_put(a, k, KV_KEY_MAX, v, KV_VAL_MAX) == 0 && a->count == 1 && a->updates == 0 &&
		      a->seq == 0,
	      "kv_put longest");
	CHECK(kv_put(a, k, KV_KEY_MAX, "x", 1) == 0 && a->count == 1 &&
		      kv_get(a, k, KV_KEY_MAX)->vlen == 1,
	      "kv_put replaces");
	CHECK(kv_get(a, k, 0) == NULL && kv_get(a, k, KV_KEY_MAX + 1) == NULL &&
		      kv_get(a, k, 1) == NULL,
	      "kv_get misses");
	kv_init(a);
	for (int i = 0; i < KV_MAX_KEYS; i++) {
		char key[8];
		snprintf(key, sizeof(key), "%d", i);
		CHECK(kv_put(a, key, strlen(key), "1", 1) == 0, "put %d", i);
	}
	CHECK(kv_put(a, "new", 3, "1", 1) == -1 && a->count == KV_MAX_KEYS, "kv_put when full");
	CHECK(kv_put(a, "7", 1, "2", 1) == 0 && kv_get(a, "7", 1)->val[0] == '2',
	      "kv_put replaces when full");
}

void test_kvtable(void)
{
	a = malloc(sizeof(*a));
	b = malloc(sizeof(*b));
	test_put();
	test_roundtrip();
	test_corrupt();
	test_forged();
	test_mutations();
	test_journal();
	free(a);
	free(b);
}
