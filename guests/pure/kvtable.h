/*
 * The kv guest's disk format: two copies of the table and a journal of
 * one sector per update, on a virtio-blk disk of 512-byte sectors.
 *
 *   sectors [0, 64)          table copy 0
 *   sectors [64, 128)        table copy 1
 *   sectors [128, 128 + J)   journal, J = the guest's `journal` param:
 *                            update n is in sector 128 + n % J
 *
 * The table does not fit in 16 sectors (the simvm twin's whole table,
 * 63 entries of 128 bytes, does): KV_MAX_KEYS entries of up to
 * 2 + KV_KEY_MAX + KV_VAL_MAX bytes are KVT_MAX_BYTES = 25120 bytes,
 * 50 sectors. Each copy has 64 sectors; a table write goes to the copy
 * the last write did not, so a torn write leaves the other copy whole.
 *
 * A table copy, little-endian, written as whole sectors (zero-padded):
 *
 *   [0, 4)    magic KVT_MAGIC ("KVTB")
 *   [4, 8)    version KVT_VERSION
 *   [8, 12)   count: entries, 0..KV_MAX_KEYS
 *   [12, 16)  bytes: length of the entry area, count*4..count*98
 *   [16, 24)  updates: the update count the table includes (updates 1..n)
 *   [24, 28)  CRC-32 of the entry area
 *   [28, 32)  CRC-32 of bytes [0, 28)
 *   [32, 32 + bytes)  entries, packed: klen (1 byte), vlen (1 byte),
 *             klen key bytes, vlen value bytes. A key is 1..KV_KEY_MAX
 *             bytes 0x21..0x7e, a value 1..KV_VAL_MAX bytes 0x20..0x7e
 *             (what kv_execute can store), no key twice.
 *
 * Of two valid copies the one with more updates is the table. A reader
 * trusts no length before the header CRC has passed and the lengths are
 * in bounds, and no entry before the entry CRC has.
 *
 * A journal sector (512 bytes), the post-image of one update:
 *
 *   [0, 4)     magic KVJ_MAGIC ("KVJL")
 *   [4, 8)     version KVJ_VERSION
 *   [8, 16)    seq: the reply number of the request that made the update
 *   [16, 24)   n: the update count, 1 for the first update
 *   [24]       klen   [25] vlen
 *   [26, 58)   key, zero-padded     [58, 122) value, zero-padded
 *   [122, 508) zero
 *   [508, 512) CRC-32 of bytes [0, 508)
 *
 * Byte 16 holds the update count in a table copy's first sector too, as
 * in the simvm twin's table and journal.
 *
 * Pure code: compiles freestanding and on the host.
 */
#ifndef GUESTS_KVTABLE_H
#define GUESTS_KVTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "kvstore.h"

#define KVD_SECTOR 512

#define KVT_MAGIC 0x4254564Bu /* "KVTB" little-endian */
#define KVT_VERSION 1u
#define KVT_HDR_SIZE 32
#define KVT_ENTRY_MAX (2 + KV_KEY_MAX + KV_VAL_MAX)
#define KVT_MAX_BYTES (KVT_HDR_SIZE + KV_MAX_KEYS * KVT_ENTRY_MAX)
#define KVT_MAX_SECTORS ((KVT_MAX_BYTES + KVD_SECTOR - 1) / KVD_SECTOR)
#define KVT_COPY_SECTORS 64 /* sectors a copy may use */
#define KVT_COPIES 2
#define KVD_JOURNAL_BASE (KVT_COPIES * KVT_COPY_SECTORS)

#define KVJ_MAGIC 0x4C4A564Bu /* "KVJL" little-endian */
#define KVJ_VERSION 1u

_Static_assert(KVT_MAX_SECTORS <= KVT_COPY_SECTORS, "a table copy outgrows its sectors");
_Static_assert(KV_MAX_KEYS <= 0xFFFF && KV_KEY_MAX <= 0xFF && KV_VAL_MAX <= 0xFF,
	       "the table's length fields are too small");
_Static_assert(26 + KV_KEY_MAX + KV_VAL_MAX <= 508, "a journal sector cannot hold an entry");

/* Verdicts of the decoders, in the order they are checked. Zero is
 * "valid"; every failure is non-zero. */
enum kvt_status {
	KVT_OK = 0,
	KVT_SHORT,       /* the buffer is shorter than a header (or a sector) */
	KVT_BAD_MAGIC,
	KVT_BAD_VERSION,
	KVT_BAD_HDR_CRC,
	KVT_BAD_LENGTH,  /* count or bytes out of bounds */
	KVT_TRUNCATED,   /* the buffer is shorter than the table says */
	KVT_BAD_CRC,     /* entry area (table) or sector (journal) */
	KVT_BAD_ENTRY,   /* a length out of range, or entries and bytes disagree */
	KVT_BAD_BYTE,    /* a key or value byte kv_execute cannot store */
	KVT_DUPLICATE,   /* the same key twice */
};

/* What a table copy's header says; valid when kvt_header returned KVT_OK. */
struct kvt_header {
	uint32_t count;
	uint32_t bytes;   /* entry area */
	uint64_t updates;
	uint32_t sectors; /* whole sectors the copy occupies, 1..KVT_MAX_SECTORS */
};

/* kvt_encode writes the table of s to buf as whole sectors (zero-padded)
 * and returns their length in bytes, or 0 if cap is too small (a cap of
 * KVT_MAX_SECTORS * KVD_SECTOR always suffices). Deterministic: the same
 * store gives the same bytes. */
size_t kvt_encode(const struct kv_store *s, uint8_t *buf, size_t cap);

/* kvt_header checks the header of the copy at buf[0, len) (magic,
 * version, header CRC, bounds) and fills *h. len >= KVT_HDR_SIZE, else
 * KVT_SHORT; the entries are not looked at. */
enum kvt_status kvt_header(const uint8_t *buf, size_t len, struct kvt_header *h);

/* kvt_decode checks the whole copy at buf[0, len) and loads it into s:
 * on KVT_OK s holds exactly its entries and update count, with the reply
 * sequence restarted (as kv_init); on any failure s is empty (kv_init). */
enum kvt_status kvt_decode(struct kv_store *s, const uint8_t *buf, size_t len);

/* One decoded journal sector. */
struct kvj_record {
	uint64_t seq;
	uint64_t update;
	uint8_t klen, vlen;
	char key[KV_KEY_MAX];
	char val[KV_VAL_MAX];
};

/* kvj_encode writes the journal sector of s's last update (s->updates > 0)
 * to buf[0, KVD_SECTOR). */
void kvj_encode(const struct kv_store *s, uint8_t *buf);

/* kvj_decode checks the journal sector buf[0, len) (len >= KVD_SECTOR,
 * else KVT_SHORT) and fills *r. */
enum kvt_status kvj_decode(const uint8_t *buf, size_t len, struct kvj_record *r);

/* kvd_journal_sector is the sector of update n in a journal of j > 0
 * sectors: KVD_JOURNAL_BASE + n % j. */
static inline uint64_t kvd_journal_sector(uint64_t n, uint64_t j)
{
	return KVD_JOURNAL_BASE + n % j;
}

/* kvt_status_str names a status for messages ("bad crc", ...). */
const char *kvt_status_str(enum kvt_status st);

#endif
