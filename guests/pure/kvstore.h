/*
 * The kv guest's store and its text protocol, one command per datagram:
 *
 *   SET <key> <value>   ->  <seq> OK
 *   GET <key>           ->  <seq> VALUE <value>  |  <seq> NOTFOUND
 *   INCR <key>          ->  <seq> VALUE <n>      (a missing key counts from 0)
 *   anything else       ->  <seq> ERR <why>
 *
 * <seq> is the server's reply counter: 1 for the first reply, +1 per reply.
 * A key is 1..KV_KEY_MAX bytes of printable ASCII without spaces; a value
 * is 1..KV_VAL_MAX printable ASCII bytes (spaces allowed: it is the rest
 * of the request after the single space that ends the key). Fields are
 * separated by exactly one space; one trailing "\n" or "\r\n" is ignored.
 * Commands are case-sensitive. INCR works on values that are decimal
 * int64 ("-12", "007"); beyond INT64_MAX it is "ERR overflow". At most
 * KV_MAX_KEYS keys; there is no delete. Why-strings never echo input.
 *
 * An update is a SET or INCR that changed the store (replied OK or VALUE);
 * the store counts them, so the guest can persist after each one (see
 * kvtable.h). Refused requests ("ERR ...") and GETs are not updates.
 *
 * Pure code: compiles freestanding and on the host.
 */
#ifndef GUESTS_KVSTORE_H
#define GUESTS_KVSTORE_H

#include <stddef.h>
#include <stdint.h>

#define KV_MAX_KEYS 256
#define KV_SLOTS 512 /* open addressing, load factor <= 1/2 */
#define KV_KEY_MAX 32
#define KV_VAL_MAX 64
#define KV_REQ_MAX 128   /* longer requests get "ERR too long" */
#define KV_REPLY_MAX 128 /* every reply fits in this many bytes */

struct kv_entry {
	uint8_t klen; /* 0 = empty slot */
	uint8_t vlen;
	char key[KV_KEY_MAX];
	char val[KV_VAL_MAX];
};

struct kv_store {
	uint32_t count;
	uint16_t last; /* slot of the last update's entry (valid once updates > 0) */
	uint64_t seq;     /* last reply's sequence number */
	uint64_t updates; /* updates so far: 1 for the first; kept on disk with the table */
	struct kv_entry slot[KV_SLOTS];
};

/* kv_init empties the store, restarts the reply sequence at 1 and the
 * update count at 0. */
void kv_init(struct kv_store *s);

/* kv_get returns the entry of key[0, klen), or NULL if there is none. */
const struct kv_entry *kv_get(const struct kv_store *s, const char *key, size_t klen);

/* kv_put sets key[0, klen) to val[0, vlen), adding the key if it is new,
 * without a reply or an update being counted (the table loader's way in).
 * It returns 0, or -1 (and changes nothing) if klen is not 1..KV_KEY_MAX,
 * vlen is not 1..KV_VAL_MAX, or the key is new and the store full. It does
 * not check the bytes: the caller does (kvtable.c does). */
int kv_put(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen);

/* kv_execute runs the request req[0, n) (any bytes) and writes the reply
 * to out, NUL-terminated; it returns the reply length (without the NUL). Every request gets
 * exactly one reply and consumes one sequence number, unless cap is
 * below KV_REPLY_MAX, in which case nothing happens and 0 is returned. */
size_t kv_execute(struct kv_store *s, const uint8_t *req, size_t n, char *out, size_t cap);

#endif
