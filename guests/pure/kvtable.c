#include "kvtable.h"

#include <stdbool.h>

#include "crc32.h"
#include "le.h"

#define KVJ_CRC_OFF 508
#define KVJ_KEY_OFF 26
#define KVJ_VAL_OFF (KVJ_KEY_OFF + KV_KEY_MAX)

size_t kvt_encode(const struct kv_store *s, uint8_t *buf, size_t cap)
{
	size_t need = KVT_HDR_SIZE, len, pos = KVT_HDR_SIZE;
	uint32_t count = 0;

	for (unsigned i = 0; i < KV_SLOTS; i++)
		if (s->slot[i].klen != 0)
			need += 2u + s->slot[i].klen + s->slot[i].vlen;
	len = (need + KVD_SECTOR - 1) / KVD_SECTOR * KVD_SECTOR;
	if (len > cap)
		return 0;
	__builtin_memset(buf, 0, len);
	for (unsigned i = 0; i < KV_SLOTS; i++) {
		const struct kv_entry *e = &s->slot[i];
		if (e->klen == 0)
			continue;
		buf[pos] = e->klen;
		buf[pos + 1] = e->vlen;
		__builtin_memcpy(buf + pos + 2, e->key, e->klen);
		__builtin_memcpy(buf + pos + 2 + e->klen, e->val, e->vlen);
		pos += 2u + e->klen + e->vlen;
		count++;
	}
	put_le32(buf, KVT_MAGIC);
	put_le32(buf + 4, KVT_VERSION);
	put_le32(buf + 8, count);
	put_le32(buf + 12, (uint32_t)(pos - KVT_HDR_SIZE));
	put_le64(buf + 16, s->updates);
	put_le32(buf + 24, crc32_update(0, buf + KVT_HDR_SIZE, pos - KVT_HDR_SIZE));
	put_le32(buf + 28, crc32_update(0, buf, 28));
	return len;
}

enum kvt_status kvt_header(const uint8_t *buf, size_t len, struct kvt_header *h)
{
	if (len < KVT_HDR_SIZE)
		return KVT_SHORT;
	if (get_le32(buf) != KVT_MAGIC)
		return KVT_BAD_MAGIC;
	if (get_le32(buf + 4) != KVT_VERSION)
		return KVT_BAD_VERSION;
	if (get_le32(buf + 28) != crc32_update(0, buf, 28))
		return KVT_BAD_HDR_CRC;
	h->count = get_le32(buf + 8);
	h->bytes = get_le32(buf + 12);
	h->updates = get_le64(buf + 16);
	/* Each entry is 4..KVT_ENTRY_MAX bytes. */
	if (h->count > KV_MAX_KEYS || h->bytes < 4u * h->count ||
	    h->bytes > (uint32_t)KVT_ENTRY_MAX * h->count)
		return KVT_BAD_LENGTH;
	h->sectors = (KVT_HDR_SIZE + h->bytes + KVD_SECTOR - 1) / KVD_SECTOR;
	return KVT_OK;
}

static bool key_byte(uint8_t c)
{
	return c > 0x20 && c <= 0x7e;
}

static bool val_byte(uint8_t c)
{
	return c >= 0x20 && c <= 0x7e;
}

/* check_entries walks the entry area e[0, n) of count entries: every
 * length in range, every byte storable, and the last entry ending at n. */
static enum kvt_status check_entries(const uint8_t *e, size_t n, uint32_t count)
{
	size_t pos = 0;

	for (uint32_t i = 0; i < count; i++) {
		size_t klen, vlen;
		if (n - pos < 2)
			return KVT_BAD_ENTRY;
		klen = e[pos];
		vlen = e[pos + 1];
		if (klen == 0 || klen > KV_KEY_MAX || vlen == 0 || vlen > KV_VAL_MAX ||
		    n - pos - 2 < klen + vlen)
			return KVT_BAD_ENTRY;
		pos += 2;
		for (size_t k = 0; k < klen; k++)
			if (!key_byte(e[pos + k]))
				return KVT_BAD_BYTE;
		for (size_t k = 0; k < vlen; k++)
			if (!val_byte(e[pos + klen + k]))
				return KVT_BAD_BYTE;
		pos += klen + vlen;
	}
	return pos == n ? KVT_OK : KVT_BAD_ENTRY;
}

enum kvt_status kvt_decode(struct kv_store *s, const uint8_t *buf, size_t len)
{
	struct kvt_header h;
	enum kvt_status st;
	const uint8_t *e = buf + KVT_HDR_SIZE;

	kv_init(s);
	if ((st = kvt_header(buf, len, &h)) != KVT_OK)
		return st;
	if (len - KVT_HDR_SIZE < h.bytes)
		return KVT_TRUNCATED;
	if (get_le32(buf + 24) != crc32_update(0, e, h.bytes))
		return KVT_BAD_CRC;
	if ((st = check_entries(e, h.bytes, h.count)) != KVT_OK)
		return st;
	for (size_t pos = 0; pos < h.bytes;) {
		const char *key = (const char *)e + pos + 2;
		size_t klen = e[pos], vlen = e[pos + 1];
		if (kv_get(s, key, klen) != NULL) {
			kv_init(s);
			return KVT_DUPLICATE;
		}
		/* Cannot fail: lengths were checked and count <= KV_MAX_KEYS. */
		kv_put(s, key, klen, key + klen, vlen);
		pos += 2 + klen + vlen;
	}
	s->updates = h.updates;
	return KVT_OK;
}

void kvj_encode(const struct kv_store *s, uint8_t *buf)
{
	const struct kv_entry *e = &s->slot[s->last];

	__builtin_memset(buf, 0, KVD_SECTOR);
	put_le32(buf, KVJ_MAGIC);
	put_le32(buf + 4, KVJ_VERSION);
	put_le64(buf + 8, s->seq);
	put_le64(buf + 16, s->updates);
	buf[24] = e->klen;
	buf[25] = e->vlen;
	__builtin_memcpy(buf + KVJ_KEY_OFF, e->key, e->klen);
	__builtin_memcpy(buf + KVJ_VAL_OFF, e->val, e->vlen);
	put_le32(buf + KVJ_CRC_OFF, crc32_update(0, buf, KVJ_CRC_OFF));
}

enum kvt_status kvj_decode(const uint8_t *buf, size_t len, struct kvj_record *r)
{
	if (len < KVD_SECTOR)
		return KVT_SHORT;
	if (get_le32(buf) != KVJ_MAGIC)
		return KVT_BAD_MAGIC;
	if (get_le32(buf + 4) != KVJ_VERSION)
		return KVT_BAD_VERSION;
	if (get_le32(buf + KVJ_CRC_OFF) != crc32_update(0, buf, KVJ_CRC_OFF))
		return KVT_BAD_CRC;
	r->seq = get_le64(buf + 8);
	r->update = get_le64(buf + 16);
	r->klen = buf[24];
	r->vlen = buf[25];
	if (r->klen == 0 || r->klen > KV_KEY_MAX || r->vlen == 0 || r->vlen > KV_VAL_MAX)
		return KVT_BAD_ENTRY;
	for (size_t k = 0; k < r->klen; k++)
		if (!key_byte(buf[KVJ_KEY_OFF + k]))
			return KVT_BAD_BYTE;
	for (size_t k = 0; k < r->vlen; k++)
		if (!val_byte(buf[KVJ_VAL_OFF + k]))
			return KVT_BAD_BYTE;
	__builtin_memcpy(r->key, buf + KVJ_KEY_OFF, r->klen);
	__builtin_memcpy(r->val, buf + KVJ_VAL_OFF, r->vlen);
	return KVT_OK;
}

const char *kvt_status_str(enum kvt_status st)
{
	switch (st) {
	case KVT_OK:
		return "ok";
	case KVT_SHORT:
		return "short buffer";
	case KVT_BAD_MAGIC:
		return "bad magic";
	case KVT_BAD_VERSION:
		return "unknown version";
	case KVT_BAD_HDR_CRC:
		return "bad header crc";
	case KVT_BAD_LENGTH:
		return "lengths out of bounds";
	case KVT_TRUNCATED:
		return "truncated";
	case KVT_BAD_CRC:
		return "bad crc";
	case KVT_BAD_ENTRY:
		return "bad entry";
	case KVT_BAD_BYTE:
		return "bad byte";
	case KVT_DUPLICATE:
		return "duplicate key";
	}
	return "unknown status";
}
