/*
 * The kv protocol: a table of exact request/reply pairs, the limits (key
 * and value sizes, a full table, INCR at the edges of int64), and a long
 * random run checked reply by reply against a naive reference model.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kvstore.h"

static struct kv_store *store;

/* run executes req (n bytes) and checks the reply text after "<seq> ". */
static void run_n(const char *req, size_t n, const char *want)
{
	char out[KV_REPLY_MAX + 16], exp[KV_REPLY_MAX + 64];
	uint64_t seq = store->seq;
	size_t len;

	memset(out, 'Z', sizeof(out));
	len = kv_execute(store, (const uint8_t *)req, n, out, KV_REPLY_MAX);
	snprintf(exp, sizeof(exp), "%lu %s", (unsigned long)(seq + 1), want);
	CHECK(store->seq == seq + 1, "request \"%.*s\" consumed %lu sequence numbers", (int)n, req,
	      (unsigned long)(store->seq - seq));
	CHECK(len == strlen(exp) && memcmp(out, exp, len) == 0, "request \"%.*s\": got \"%.*s\" want \"%s\"",
	      (int)n, req, (int)len, out, exp);
	CHECK(len < KV_REPLY_MAX && out[len] == 0 && out[len + 1] == 'Z', "reply overran: length %zu", len);
}

static void run(const char *req, const char *want)
{
	run_n(req, strlen(req), want);
}

static void test_table(void)
{
	char k32[33], k33[34], v64[65], v65[66], req[256];

	run("GET a", "NOTFOUND");
	run("SET a 1", "OK");
	run("GET a", "VALUE 1");
	run("SET a hello world", "OK");
	run("GET a", "VALUE hello world");
	run("SET a  lead", "OK"); /* the value is everything after one space */
	run("GET a", "VALUE  lead");
	run("GET a\n", "VALUE  lead");
	run("GET a\r\n", "VALUE  lead");
	run("GET a\n\n", "ERR bad byte");
	run("GET a\r", "ERR bad byte");
	run("", "ERR empty request");
	run("\n", "ERR empty request");
	run("GET", "ERR usage");
	run("GET ", "ERR usage");
	run("GET  a", "ERR usage");
	run("GET a ", "ERR usage");
	run("GET a b", "ERR usage");
	run("SET", "ERR usage");
	run("SET a", "ERR usage");
	run("SET a ", "ERR usage");
	run("INCR", "ERR usage");
	run("INCR a b", "ERR usage");
	run("get a", "ERR unknown command");
	run("GETA a", "ERR unknown command");
	run("DEL a", "ERR unknown command");
	run(" GET a", "ERR unknown command");
	run("SETX a 1", "ERR unknown command");
	run("GET\ta", "ERR bad byte");
	run("SET a caf\xc3\xa9", "ERR bad byte");
	run("SET a \x7f", "ERR bad byte");
	run_n("GET a\0b", 7, "ERR bad byte");
	run_n("GET\0", 4, "ERR bad byte");

	memset(k32, 'k', 32);
	k32[32] = 0;
	memset(k33, 'k', 33);
	k33[33] = 0;
	memset(v64, 'v', 64);
	v64[64] = 0;
	memset(v65, 'v', 65);
	v65[65] = 0;
	snprintf(req, sizeof(req), "SET %s %s", k32, v64);
	run(req, "OK");
	snprintf(req, sizeof(req), "GET %s", k32);
	snprintf(k33, sizeof(k33), "VALUE %.26s", v64); /* scratch: prefix check below */
	{
		char want[80];
		snprintf(want, sizeof(want), "VALUE %s", v64);
		run(req, want);
	}
	memset(k33, 'k', 33);
	k33[33] = 0;
	snprintf(req, sizeof(req), "SET %s 1", k33);
	run(req, "ERR key too long");
	snprintf(req, sizeof(req), "GET %s", k33);
	run(req, "ERR key too long");
	snprintf(req, sizeof(req), "INCR %s", k33);
	run(req, "ERR key too long");
	snprintf(req, sizeof(req), "SET %s %s", k32, v65);
	run(req, "ERR value too long");
	{
		char big[KV_REQ_MAX + 2];
		memset(big, 'x', sizeof(big));
		memcpy(big, "GET ", 4);
		run_n(big, KV_REQ_MAX + 1, "ERR too long");
		run_n(big, KV_REQ_MAX, "ERR key too long");
		big[KV_REQ_MAX] = '\n'; /* the newline is not counted */
		run_n(big, KV_REQ_MAX + 1, "ERR key too long");
		char *huge = malloc(100000);
		memset(huge, 'A', 100000);
		run_n(huge, 100000, "ERR too long");
		free(huge);
	}

	/* INCR. */
	run("INCR n", "VALUE 1");
	run("INCR n", "VALUE 2");
	run("GET n", "VALUE 2");
	run("SET n -2", "OK");
	run("INCR n", "VALUE -1");
	run("INCR n", "VALUE 0");
	run("INCR n", "VALUE 1");
	run("SET n 007", "OK");
	run("INCR n", "VALUE 8");
	run("SET n 9223372036854775806", "OK");
	run("INCR n", "VALUE 9223372036854775807");
	run("INCR n", "ERR overflow");
	run("GET n", "VALUE 9223372036854775807");
	run("SET n -9223372036854775808", "OK");
	run("INCR n", "VALUE -9223372036854775807");
	run("SET n 9223372036854775808", "OK");
	run("INCR n", "ERR not a number");
	run("SET n abc", "OK");
	run("INCR n", "ERR not a number");
	run("SET n 1 2", "OK");
	run("INCR n", "ERR not a number");
	run("SET n +1", "OK");
	run("INCR n", "ERR not a number");
	run("SET n -", "OK");
	run("INCR n", "ERR not a number");
	run("GET n", "VALUE -");

	/* A full table: updates and reads still work, new keys do not. */
	kv_init(store);
	for (int i = 0; i < KV_MAX_KEYS; i++) {
		snprintf(req, sizeof(req), "SET key%d v%d", i, i);
		run(req, "OK");
	}
	CHECK(store->count == KV_MAX_KEYS, "count %u", store->count);
	run("SET another 1", "ERR full");
	run("INCR another", "ERR full");
	run("GET another", "NOTFOUND");
	run("SET key7 changed", "OK");
	run("GET key7", "VALUE changed");
	run("SET key8 41", "OK");
	run("INCR key8", "VALUE 42");
	for (int i = 0; i < KV_MAX_KEYS; i++) {
		char want[64];
		snprintf(req, sizeof(req), "GET key%d", i);
		snprintf(want, sizeof(want), "VALUE %s",
			 i == 7 ? "changed" : i == 8 ? "42" : (snprintf(k33, sizeof(k33), "v%d", i), k33));
		run(req, want);
	}
	CHECK(store->count == KV_MAX_KEYS, "count after updates %u", store->count);

	/* A reply buffer below KV_REPLY_MAX is refused without side effects. */
	{
		char small[KV_REPLY_MAX - 1];
		uint64_t seq = store->seq;
		CHECK(kv_execute(store, (const uint8_t *)"SET z 1", 7, small, sizeof(small)) == 0 &&
			      store->seq == seq,
		      "small reply buffer");
		run("GET z", "NOTFOUND");
	}
}

/* The reference model: a flat list, linear search, same rules. */
struct model_entry {
	char key[KV_KEY_MAX + 1];
	char val[KV_VAL_MAX + 1];
};

static struct model_entry model[KV_MAX_KEYS];
static int model_n;

static struct model_entry *model_find(const char *k)
{
	for (int i = 0; i < model_n; i++)
		if (strcmp(model[i].key, k) == 0)
			return &model[i];
	return NULL;
}

static void random_key(char *k)
{
	/* A small alphabet and lengths up to 34 give collisions, hits and
	 * too-long keys. */
	int len = 1 + (int)(test_rand() % (test_rand() % 8 == 0 ? 34 : 3));
	for (int i = 0; i < len; i++)
		k[i] = "abAB09_~"[test_rand() % 8];
	k[len] = 0;
}

static void test_model(void)
{
	char key[40], val[80], req[160], want[160];
	uint64_t updates = 0;

	kv_init(store);
	model_n = 0;
	for (int i = 0; i < 200000; i++) {
		int op = (int)(test_rand() % 3);
		struct model_entry *e;

		random_key(key);
		e = strlen(key) <= KV_KEY_MAX ? model_find(key) : NULL;
		if (op == 0) {
			int vlen = 1 + (int)(test_rand() % 66);
			if (test_rand() % 4 == 0)
				snprintf(val, sizeof(val), "%ld", (long)(test_rand() % 2000) - 1000);
			else {
				for (int k = 0; k < vlen; k++)
					val[k] = (char)(0x20 + test_rand() % 95);
				val[vlen] = 0;
			}
			snprintf(req, sizeof(req), "SET %s %s", key, val);
			if (strlen(key) > KV_KEY_MAX)
				strcpy(want, "ERR key too long");
			else if (strlen(val) > KV_VAL_MAX)
				strcpy(want, "ERR value too long");
			else if (e == NULL && model_n == KV_MAX_KEYS)
				strcpy(want, "ERR full");
			else {
				if (e == NULL) {
					e = &model[model_n++];
					strcpy(e->key, key);
				}
				strcpy(e->val, val);
				strcpy(want, "OK");
			}
		} else if (op == 1) {
			snprintf(req, sizeof(req), "GET %s", key);
			if (strlen(key) > KV_KEY_MAX)
				strcpy(want, "ERR key too long");
			else if (e == NULL)
				strcpy(want, "NOTFOUND");
			else
				snprintf(want, sizeof(want), "VALUE %s", e->val);
		} else {
			char *end;
			long long v = 0;
			bool num = true;
			snprintf(req, sizeof(req), "INCR %s", key);
			if (e != NULL) {
				const char *s = e->val;
				num = (s[0] == '-' ? s[1] : s[0]) != 0;
				for (const char *p = s[0] == '-' ? s + 1 : s; *p; p++)
					num = num && *p >= '0' && *p <= '9';
				if (num)
					v = strtoll(s, &end, 10);
			}
			if (strlen(key) > KV_KEY_MAX)
				strcpy(want, "ERR key too long");
			else if (!num)
				strcpy(want, "ERR not a number");
			else if (e == NULL && model_n == KV_MAX_KEYS)
				strcpy(want, "ERR full");
			else {
				if (e == NULL) {
					e = &model[model_n++];
					strcpy(e->key, key);
				}
				snprintf(e->val, sizeof(e->val), "%lld", v + 1);
				snprintf(want, sizeof(want), "VALUE %lld", v + 1);
			}
		}
		run(req, want);
		/* An update is a SET or INCR that succeeded; it names its entry. */
		if (op != 1 && strncmp(want, "ERR", 3) != 0) {
			const struct kv_entry *last = &store->slot[store->last];
			updates++;
			CHECK(last->klen == strlen(key) && memcmp(last->key, key, last->klen) == 0 &&
				      last->vlen == strlen(e->val) && memcmp(last->val, e->val, last->vlen) == 0,
			      "request \"%s\": the last update's entry is not its key's", req);
		}
		CHECK(store->updates == updates, "request \"%s\": updates %lu, model %lu", req,
		      (unsigned long)store->updates, (unsigned long)updates);
		if (failures > 50)
			return;
	}
	CHECK(store->count == (uint32_t)model_n, "count %u model %d", store->count, model_n);
}

void test_kv(void)
{
	store = malloc(sizeof(*store));
	kv_init(store);
	test_table();
	test_model();
	free(store);
}
