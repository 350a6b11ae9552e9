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
	uint64_t seq; /* last reply's sequence number */
	struct kv_entry slot[KV_SLOTS];
};

/* kv_init empties the store and restarts the reply sequence at 1. */
void kv_init(struct kv_store *s);

/* kv_execute runs the request req[0, n) (any bytes) and writes the reply
 * to out, NUL-terminated; it returns the reply length (without the NUL). Every request gets
 * exactly one reply and consumes one sequence number, unless cap is
 * below KV_REPLY_MAX, in which case nothing happens and 0 is returned. */
size_t kv_execute(struct kv_store *s, const uint8_t *req, size_t n, char *out, size_t cap);

#endif
