/*
 * The vring driver against a fake device that plays by the legacy virtio
 * rules (reads the available ring, walks chains, fills writable buffers,
 * completes in any order), then against one that breaks them.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "vring.h"

#define BUF 48
#define MAXN 4

struct fakedev {
	struct vq *q;
	uint16_t last_avail;
	uint16_t used_idx;
	uint16_t pending[VQ_MAX];
	unsigned npending;
};

struct req {
	bool live;
	unsigned n;
	bool write[MAXN];
	uint8_t data[MAXN][BUF];
	uint32_t len[MAXN];
};

static uint8_t addr_pattern(const uint8_t *p, unsigned k)
{
	return (uint8_t)((uintptr_t)p * 13 + k);
}

static uint8_t dev_pattern(uint16_t head, unsigned j, unsigned k)
{
	return (uint8_t)(head * 31 + j * 7 + k + 1);
}

/* dev_fetch moves newly available chains into the device's pending list. */
static void dev_fetch(struct fakedev *d)
{
	uint16_t idx = __atomic_load_n(&d->q->avail->idx, __ATOMIC_ACQUIRE);

	while (d->last_avail != idx) {
		d->pending[d->npending++] = d->q->avail->ring[d->last_avail % d->q->num];
		d->last_avail++;
	}
}

/* dev_complete completes the k-th pending chain, checking what it sees. */
static void dev_complete(struct fakedev *d, unsigned k)
{
	uint16_t head = d->pending[k], i = head;
	uint32_t written = 0;
	unsigned j = 0;

	d->pending[k] = d->pending[--d->npending];
	for (;;) {
		struct vring_desc *desc = &d->q->desc[i];
		uint8_t *p = (uint8_t *)(uintptr_t)desc->addr;
		CHECK(desc->len <= BUF, "descriptor %u length %u", i, desc->len);
		for (unsigned b = 0; b < desc->len; b++) {
			if (desc->flags & VRING_DESC_F_WRITE) {
				CHECK(p[b] == 0xEE, "writable buffer %u not as the driver left it", j);
				p[b] = dev_pattern(head, j, b);
			} else {
				CHECK(p[b] == addr_pattern(p, b), "readable buffer %u of chain %u", j,
				      head);
			}
		}
		if (desc->flags & VRING_DESC_F_WRITE)
			written += desc->len;
		j++;
		if (!(desc->flags & VRING_DESC_F_NEXT))
			break;
		CHECK(j < MAXN && desc->next < d->q->num, "chain %u runs on", head);
		if (j >= MAXN || desc->next >= d->q->num)
			break;
		i = desc->next;
	}
	d->q->used->ring[d->used_idx % d->q->num] = (struct vring_used_elem){ head, written };
	d->used_idx++;
	__atomic_store_n(&d->q->used->idx, d->used_idx, __ATOMIC_RELEASE);
}

static struct vq *new_queue(unsigned num, void **mem)
{
	struct vq *q = calloc(1, sizeof(*q));
	*mem = aligned_alloc(VRING_ALIGN, vring_bytes(num));
	memset(*mem, 0xAB, vring_bytes(num)); /* vq_init must clear it */
	CHECK(vq_init(q, *mem, num) == 0, "vq_init(%u)", num);
	return q;
}

static void run_random(unsigned num, unsigned ops)
{
	void *mem;
	struct vq *q = new_queue(num, &mem);
	struct fakedev d = { .q = q };
	struct req *reqs = calloc(num, sizeof(*reqs));
	int *slot_of = malloc(VQ_MAX * sizeof(int)); /* by chain head: index into reqs */
	unsigned live = 0, completed = 0;

	for (unsigned i = 0; i < VQ_MAX; i++)
		slot_of[i] = -1;

	CHECK(q->avail->flags == VRING_AVAIL_F_NO_INTERRUPT, "polling driver asks for no interrupts");
	for (unsigned op = 0; op < ops; op++) {
		unsigned what = (unsigned)(test_rand() % 3);
		if (what == 0) {
			struct vq_buf bufs[MAXN];
			/* Mostly chains that can fit; sometimes longer than the queue. */
			unsigned maxn = test_rand() % 8 == 0 || num > MAXN ? MAXN : num;
			unsigned n = 1 + (unsigned)(test_rand() % maxn);
			unsigned nread = (unsigned)(test_rand() % (n + 1));
			struct req r = { .live = true, .n = n };
			uint16_t head;
			for (unsigned j = 0; j < n; j++) {
				r.write[j] = j >= nread;
				r.len[j] = (uint32_t)(test_rand() % (BUF + 1));
			}
			bool fits = n <= q->num_free;
			uint16_t free_before = q->num_free;
			int si = -1;
			for (unsigned s = 0; s < num && si < 0; s++)
				if (!reqs[s].live)
					si = (int)s;
			if (si < 0) {
				CHECK(!fits, "no request slot but %u descriptors free", q->num_free);
				continue;
			}
			struct req *slot = &reqs[si];
			*slot = r;
			for (unsigned j = 0; j < n; j++) {
				for (unsigned b = 0; b < BUF; b++)
					slot->data[j][b] = r.write[j] ? 0xEE : addr_pattern(slot->data[j], b);
				bufs[j] = (struct vq_buf){ slot->data[j], slot->len[j], r.write[j] };
			}
			int rc = vq_add(q, bufs, n, &head);
			CHECK(rc == (fits ? 0 : -1), "vq_add of %u with %u free gave %d", n, free_before,
			      rc);
			if (rc != 0) {
				slot->live = false;
				CHECK(q->num_free == free_before, "a failed vq_add changed the free count");
				continue;
			}
			CHECK(slot_of[head] < 0, "head %u reused while in flight", head);
			slot_of[head] = si;
			live++;
		} else if (what == 1) {
			dev_fetch(&d);
			if (d.npending > 0)
				dev_complete(&d, (unsigned)(test_rand() % d.npending));
		} else {
			uint16_t head;
			uint32_t len;
			int rc = vq_used(q, &head, &len);
			CHECK(rc >= 0, "vq_used reported a device error on a correct device");
			if (rc != 1)
				continue;
			CHECK(slot_of[head] >= 0, "completion for head %u that is not live", head);
			if (slot_of[head] < 0)
				continue;
			struct req *r = &reqs[slot_of[head]];
			uint32_t want = 0;
			slot_of[head] = -1;
			for (unsigned j = 0; j < r->n; j++) {
				if (!r->write[j])
					continue;
				want += r->len[j];
				for (unsigned b = 0; b < r->len[j]; b++)
					CHECK(r->data[j][b] == dev_pattern(head, j, b),
					      "device data in buffer %u of chain %u", j, head);
			}
			CHECK(len == want, "used len %u want %u", len, want);
			r->live = false;
			live--;
			completed++;
		}
	}
	/* Drain: everything comes back, and every descriptor is free again. */
	for (;;) {
		uint16_t head;
		uint32_t len;
		dev_fetch(&d);
		while (d.npending > 0)
			dev_complete(&d, 0);
		if (vq_used(q, &head, &len) != 1)
			break;
		reqs[slot_of[head]].live = false;
		slot_of[head] = -1;
		live--;
		completed++;
	}
	CHECK(live == 0 && q->num_free == num && q->chains == 0,
	      "after drain: live %u free %u of %u chains %u", live, q->num_free, num, q->chains);
	CHECK(completed > ops / 20, "only %u completions in %u ops", completed, ops);
	free(slot_of);
	free(reqs);
	free(mem);
	free(q);
}

static void test_protocol_violations(void)
{
	void *mem;
	struct vq *q = new_queue(8, &mem);
	struct fakedev d = { .q = q };
	uint8_t a[8], b[8];
	struct vq_buf bufs[2] = { { a, 8, false }, { b, 8, true } };
	struct vq_buf bad[2] = { { b, 8, true }, { a, 8, false } };
	uint16_t head, h2;
	uint32_t len;

	for (unsigned k = 0; k < 8; k++) {
		a[k] = addr_pattern(a, k);
		b[k] = 0xEE;
	}
	CHECK(vq_add(q, bufs, 0, &head) == -1, "empty chain");
	CHECK(vq_add(q, bad, 2, &head) == -1, "readable after writable");
	CHECK(q->num_free == 8 && q->avail->idx == 0, "rejected adds leave no trace");
	CHECK(vq_add(q, bufs, 2, &head) == 0, "add");
	CHECK(vq_used(q, &h2, &len) == 0, "nothing used yet");

	/* Used entry naming a descriptor out of range. */
	q->used->ring[0] = (struct vring_used_elem){ 99, 0 };
	q->used->idx = 1;
	CHECK(vq_used(q, &h2, &len) == -1, "id out of range");
	/* Naming a descriptor that is not a chain head in flight. */
	q->used->ring[0] = (struct vring_used_elem){ (uint32_t)(head + 1), 0 };
	CHECK(vq_used(q, &h2, &len) == -1, "id not in flight");
	/* An index that runs ahead of what is in flight. */
	q->used->ring[0] = (struct vring_used_elem){ head, 0 };
	q->used->idx = 2;
	CHECK(vq_used(q, &h2, &len) == -1, "index jump");
	q->used->idx = 0xFFFF;
	CHECK(vq_used(q, &h2, &len) == -1, "index going backwards");
	/* The legitimate completion still works, once, and only once. */
	q->used->idx = 0;
	dev_fetch(&d);
	dev_complete(&d, 0);
	CHECK(vq_used(q, &h2, &len) == 1 && h2 == head && len == 8, "legit completion");
	q->used->ring[1] = (struct vring_used_elem){ head, 0 };
	q->used->idx = 2;
	CHECK(vq_used(q, &h2, &len) == -1, "double completion of one chain");
	free(mem);
	free(q);

	CHECK(vring_bytes(256) == 4096 * 3 && vring_bytes(1) == 4096 * 2 &&
		      vring_bytes(1024) == 16384 + 8192 + 8192,
	      "legacy layout sizes %zu %zu %zu", vring_bytes(256), vring_bytes(1), vring_bytes(1024));
	struct vq qq;
	void *m = aligned_alloc(VRING_ALIGN, vring_bytes(1024) + VRING_ALIGN);
	CHECK(vq_init(&qq, m, 0) == -1 && vq_init(&qq, m, 3) == -1 && vq_init(&qq, m, 2048) == -1,
	      "bad sizes");
	CHECK(vq_init(&qq, (uint8_t *)m + 64, 8) == -1, "misaligned ring");
	CHECK(vq_init(&qq, m, 256) == 0 &&
		      (uint8_t *)qq.used == (uint8_t *)m + 8192 &&
		      (uint8_t *)qq.avail == (uint8_t *)m + 4096,
	      "legacy layout of a 256-entry queue");
	vq_interrupts(&qq, true);
	CHECK(qq.avail->flags == 0 && qq.avail->idx == 0, "interrupts on: only the flag clears");
	vq_interrupts(&qq, false);
	CHECK(qq.avail->flags == VRING_AVAIL_F_NO_INTERRUPT, "interrupts off again");
	free(m);
}

void test_vring(void)
{
	test_protocol_violations();
	run_random(1, 2000);
	run_random(4, 50000);
	run_random(8, 300000); /* more than 65536 chains: the 16-bit indexes wrap */
	run_random(256, 100000);
}
