#include "kvstore.h"

#include "fmt.h"
#include "parse.h"

void kv_init(struct kv_store *s)
{
	__builtin_memset(s, 0, sizeof(*s));
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 16777619u;
	}
	return h;
}

/* lookup returns the slot holding key, or the empty slot where it would
 * go. There is always an empty slot: count <= KV_MAX_KEYS < KV_SLOTS. */
static struct kv_entry *lookup(struct kv_store *s, const uint8_t *key, size_t klen)
{
	uint32_t i = fnv1a(key, klen) & (KV_SLOTS - 1);

	for (;;) {
		struct kv_entry *e = &s->slot[i];
		if (e->klen == 0)
			return e;
		if (e->klen == klen && __builtin_memcmp(e->key, key, klen) == 0)
			return e;
		i = (i + 1) & (KV_SLOTS - 1);
	}
}

const struct kv_entry *kv_get(const struct kv_store *s, const char *key, size_t klen)
{
	const struct kv_entry *e;

	if (klen == 0 || klen > KV_KEY_MAX)
		return NULL;
	e = lookup((struct kv_store *)s, (const uint8_t *)key, klen);
	return e->klen != 0 ? e : NULL;
}

/* insert adds key at the empty slot e that lookup returned; it returns e
 * as it is if the key is already there, NULL if the store is full. */
static struct kv_entry *insert(struct kv_store *s, struct kv_entry *e, const uint8_t *key,
			       size_t klen)
{
	if (e->klen != 0)
		return e;
	if (s->count >= KV_MAX_KEYS)
		return NULL;
	s->count++;
	e->klen = (uint8_t)klen;
	__builtin_memcpy(e->key, key, klen);
	e->vlen = 0;
	return e;
}

int kv_put(struct kv_store *s, const char *key, size_t klen, const char *val, size_t vlen)
{
	struct kv_entry *e;

	if (klen == 0 || klen > KV_KEY_MAX || vlen == 0 || vlen > KV_VAL_MAX)
		return -1;
	e = insert(s, lookup(s, (const uint8_t *)key, klen), (const uint8_t *)key, klen);
	if (e == NULL)
		return -1;
	e->vlen = (uint8_t)vlen;
	__builtin_memcpy(e->val, val, vlen);
	return 0;
}

/* updated counts an update of entry e. */
static void updated(struct kv_store *s, const struct kv_entry *e)
{
	s->updates++;
	s->last = (uint16_t)(e - s->slot);
}

static size_t reply(struct kv_store *s, char *out, size_t cap, const char *what,
		    const char *val, size_t vlen)
{
	int n;

	s->seq++;
	if (val != NULL)
		n = fmt_snprintf(out, cap, "%lu %s %.*s", (unsigned long)s->seq, what, (int)vlen, val);
	else
		n = fmt_snprintf(out, cap, "%lu %s", (unsigned long)s->seq, what);
	return (size_t)n < cap ? (size_t)n : cap - 1;
}

static size_t err(struct kv_store *s, char *out, size_t cap, const char *why)
{
	int n;

	s->seq++;
	n = fmt_snprintf(out, cap, "%lu ERR %s", (unsigned long)s->seq, why);
	return (size_t)n < cap ? (size_t)n : cap - 1;
}

/* next_field splits req[*pos, n) at the next space: the field is
 * [start, end) and *pos moves past the space (or to n). */
static size_t next_field(const uint8_t *req, size_t n, size_t *pos, size_t *start)
{
	size_t i = *pos;

	*start = i;
	while (i < n && req[i] != ' ')
		i++;
	*pos = i < n ? i + 1 : n;
	return i - *start;
}

static int has_more(size_t pos, size_t n, const uint8_t *req)
{
	return pos < n || (n > 0 && req[n - 1] == ' ');
}

size_t kv_execute(struct kv_store *s, const uint8_t *req, size_t n, char *out, size_t cap)
{
	size_t pos = 0, cstart, kstart, clen, klen;
	enum { CMD_SET = 1, CMD_GET, CMD_INCR } cmd;
	struct kv_entry *e;

	if (cap < KV_REPLY_MAX)
		return 0;
	if (n > 0 && req[n - 1] == '\n') {
		n--;
		if (n > 0 && req[n - 1] == '\r')
			n--;
	}
	if (n > KV_REQ_MAX)
		return err(s, out, cap, "too long");
	if (n == 0)
		return err(s, out, cap, "empty request");
	for (size_t i = 0; i < n; i++)
		if (req[i] < 0x20 || req[i] > 0x7e)
			return err(s, out, cap, "bad byte");

	clen = next_field(req, n, &pos, &cstart);
	if (clen == 3 && __builtin_memcmp(req + cstart, "SET", 3) == 0)
		cmd = CMD_SET;
	else if (clen == 3 && __builtin_memcmp(req + cstart, "GET", 3) == 0)
		cmd = CMD_GET;
	else if (clen == 4 && __builtin_memcmp(req + cstart, "INCR", 4) == 0)
		cmd = CMD_INCR;
	else
		return err(s, out, cap, "unknown command");
	klen = next_field(req, n, &pos, &kstart);
	if (klen == 0)
		return err(s, out, cap, "usage");
	if (klen > KV_KEY_MAX)
		return err(s, out, cap, "key too long");
	e = lookup(s, req + kstart, klen);

	switch (cmd) {
	case CMD_SET: {
		size_t vlen = n - pos;
		if (pos >= n)
			return err(s, out, cap, "usage");
		if (vlen > KV_VAL_MAX)
			return err(s, out, cap, "value too long");
		e = insert(s, e, req + kstart, klen);
		if (e == NULL)
			return err(s, out, cap, "full");
		e->vlen = (uint8_t)vlen;
		__builtin_memcpy(e->val, req + pos, vlen);
		updated(s, e);
		return reply(s, out, cap, "OK", NULL, 0);
	}
	case CMD_GET:
		if (has_more(pos, n, req))
			return err(s, out, cap, "usage");
		if (e->klen == 0)
			return reply(s, out, cap, "NOTFOUND", NULL, 0);
		return reply(s, out, cap, "VALUE", e->val, e->vlen);
	case CMD_INCR: {
		int64_t v = 0;
		char num[FMT_U64_MAX + 2];
		if (has_more(pos, n, req))
			return err(s, out, cap, "usage");
		if (e->klen != 0 && !parse_i64(e->val, e->vlen, &v))
			return err(s, out, cap, "not a number");
		if (v == INT64_MAX)
			return err(s, out, cap, "overflow");
		e = insert(s, e, req + kstart, klen);
		if (e == NULL)
			return err(s, out, cap, "full");
		v++;
		e->vlen = (uint8_t)fmt_snprintf(num, sizeof(num), "%ld", (long)v);
		__builtin_memcpy(e->val, num, e->vlen);
		updated(s, e);
		return reply(s, out, cap, "VALUE", e->val, e->vlen);
	}
	}
	return err(s, out, cap, "unknown command");
}
