/*
 * The driver side of a legacy (virtio 0.9.5) split virtqueue: descriptor
 * table, available ring, used ring, laid out in one block of memory with
 * the used ring on the next 4096-byte boundary.
 *
 * Pure code: it only reads and writes the ring memory it is given, so the
 * host test harness can play the device. Buffer addresses are the
 * pointers themselves (guests run identity-mapped, so pointer == GPA).
 *
 * The driver keeps its own shadow of the free list and of each chain's
 * length; it never follows a link the device could have written, and
 * vq_used rejects a used entry that names no chain in flight.
 * Not thread-safe: one vCPU drives a queue.
 */
#ifndef GUESTS_VRING_H
#define GUESTS_VRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_ALIGN 4096
#define VQ_MAX 1024 /* the largest queue this driver accepts */

/* This mirrors struct vring_desc of the virtio spec. */
struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

/* This mirrors struct vring_avail (no used_event: EVENT_IDX is not used). */
struct vring_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];
};

/* This mirrors struct vring_used_elem. */
struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

/* This mirrors struct vring_used. */
struct vring_used {
	uint16_t flags;
	uint16_t idx;
	struct vring_used_elem ring[];
};

struct vq {
	unsigned num;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	uint16_t avail_idx; /* next avail->idx to publish */
	uint16_t last_used; /* next used entry to consume */
	uint16_t free_head;
	uint16_t num_free;
	uint16_t chains; /* chains in flight */
	uint16_t next_free[VQ_MAX]; /* free list and, while in flight, chain links */
	uint16_t chain_len[VQ_MAX]; /* by head: descriptors in flight, 0 = none */
};

/* One buffer of a chain; device-readable ones must precede writable ones. */
struct vq_buf {
	void *addr;
	uint32_t len;
	bool write; /* device writes it (VRING_DESC_F_WRITE) */
};

/* vring_bytes is the memory a queue of num entries needs (page-rounded). */
size_t vring_bytes(unsigned num);

/* vq_init zeroes vring_bytes(num) bytes at mem (VRING_ALIGN-aligned) and
 * lays the rings out there. num must be a power of two in [1, VQ_MAX].
 * Returns 0, or -1 for a bad num or alignment. */
int vq_init(struct vq *q, void *mem, unsigned num);

/* vq_interrupts asks the device to interrupt when it uses buffers of q
 * (on: VRING_AVAIL_F_NO_INTERRUPT clear), or not to (vq_init's choice). A
 * hint: the device may interrupt anyway, and one already raised stays. */
void vq_interrupts(struct vq *q, bool on);

/* vq_add places one chain of n buffers and publishes it in the available
 * ring; the caller notifies the device. On success *head names the chain
 * (as vq_used will report it) and 0 is returned; -1 means too few free
 * descriptors, n == 0, or a readable buffer after a writable one. */
int vq_add(struct vq *q, const struct vq_buf *bufs, unsigned n, uint16_t *head);

/* vq_used consumes one used entry: 1 with *head and *len (bytes the device
 * wrote) set and the chain's descriptors freed, 0 if there is none, -1 if
 * the device broke the protocol (an index jump past num, an id out of
 * range or not in flight); after -1 the queue is unusable. */
int vq_used(struct vq *q, uint16_t *head, uint32_t *len);

#endif
