#include "vring.h"

static size_t align_up(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static size_t used_offset(unsigned num)
{
	return align_up(sizeof(struct vring_desc) * num + sizeof(uint16_t) * (3 + num), VRING_ALIGN);
}

size_t vring_bytes(unsigned num)
{
	return used_offset(num) +
	       align_up(sizeof(uint16_t) * 3 + sizeof(struct vring_used_elem) * num, VRING_ALIGN);
}

int vq_init(struct vq *q, void *mem, unsigned num)
{
	if (num == 0 || num > VQ_MAX || (num & (num - 1)) != 0)
		return -1;
	if (((uintptr_t)mem & (VRING_ALIGN - 1)) != 0)
		return -1;
	__builtin_memset(mem, 0, vring_bytes(num));
	q->num = num;
	q->desc = mem;
	q->avail = (struct vring_avail *)((uint8_t *)mem + sizeof(struct vring_desc) * num);
	q->used = (struct vring_used *)((uint8_t *)mem + used_offset(num));
	q->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	q->avail_idx = 0;
	q->last_used = 0;
	q->free_head = 0;
	q->num_free = (uint16_t)num;
	q->chains = 0;
	for (unsigned i = 0; i < num; i++) {
		q->next_free[i] = (uint16_t)((i + 1) % num);
		q->chain_len[i] = 0;
	}
	return 0;
}

void vq_interrupts(struct vq *q, bool on)
{
	__atomic_store_n(&q->avail->flags, on ? 0 : VRING_AVAIL_F_NO_INTERRUPT, __ATOMIC_RELEASE);
}

int vq_add(struct vq *q, const struct vq_buf *bufs, unsigned n, uint16_t *head)
{
	bool seen_write = false;
	uint16_t i;

	if (n == 0 || n > q->num_free)
		return -1;
	for (unsigned k = 0; k < n; k++) {
		if (seen_write && !bufs[k].write)
			return -1;
		seen_write = bufs[k].write;
	}
	*head = i = q->free_head;
	for (unsigned k = 0; k < n; k++) {
		struct vring_desc *d = &q->desc[i];
		d->addr = (uint64_t)(uintptr_t)bufs[k].addr;
		d->len = bufs[k].len;
		d->flags = bufs[k].write ? VRING_DESC_F_WRITE : 0;
		d->next = 0;
		if (k + 1 < n) {
			d->flags |= VRING_DESC_F_NEXT;
			d->next = q->next_free[i];
		}
		i = q->next_free[i];
	}
	q->free_head = i;
	q->num_free = (uint16_t)(q->num_free - n);
	q->chain_len[*head] = (uint16_t)n;
	q->chains++;
	q->avail->ring[q->avail_idx % q->num] = *head;
	q->avail_idx++;
	/* The ring entry and descriptors must be visible before the index. */
	__atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
	return 0;
}

int vq_used(struct vq *q, uint16_t *head, uint32_t *len)
{
	uint16_t idx = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	uint16_t pending = (uint16_t)(idx - q->last_used);
	struct vring_used_elem e;
	uint16_t tail;

	if (pending == 0)
		return 0;
	if (pending > q->chains)
		return -1;
	e = q->used->ring[q->last_used % q->num];
	if (e.id >= q->num || q->chain_len[e.id] == 0)
		return -1;
	tail = (uint16_t)e.id;
	for (unsigned k = 1; k < q->chain_len[e.id]; k++)
		tail = q->next_free[tail];
	q->next_free[tail] = q->free_head;
	q->free_head = (uint16_t)e.id;
	q->num_free = (uint16_t)(q->num_free + q->chain_len[e.id]);
	q->chain_len[e.id] = 0;
	q->chains--;
	q->last_used++;
	*head = (uint16_t)e.id;
	*len = e.len;
	return 1;
}
