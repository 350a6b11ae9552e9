/*
 * A polling virtio-blk driver over the legacy virtio-PCI transport
 * (virtio.h): queue 0, one request in flight at a time, each a chain of
 * the 16-byte request header, the data (if any) and the status byte the
 * device writes last. Used by the disk and kv guests.
 */
#ifndef GUESTS_BLK_H
#define GUESTS_BLK_H

#include <stdbool.h>
#include <stdint.h>

#include "virtio.h"

#define VIRTIO_BLK_F_RO (1u << 5)
#define VIRTIO_BLK_F_FLUSH (1u << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_S_OK 0
#define BLK_SECTOR 512

/* This mirrors struct virtio_blk_outhdr. */
struct blk_req_hdr {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
};

/* Failures of blk_submit and blk_wait (negative; a status byte is >= 0).
 * blk.detail says more: the free descriptors, the request type, the used
 * index, or the chain the device completed. */
enum {
	BLK_ERR_NO_DESC = -1,
	BLK_ERR_TIMEOUT = -2, /* the request is still in flight */
	BLK_ERR_RING = -3,    /* the device broke the used ring: the queue is dead */
	BLK_ERR_UNKNOWN = -4, /* the device completed a chain not in flight */
};

struct blk {
	struct virtio_dev dev;
	struct vq queue;
	uint64_t capacity; /* sectors, from the device configuration */
	uint64_t detail;   /* about the last failure */
	uint16_t head;     /* the chain in flight */
	struct blk_req_hdr hdr;
	volatile uint8_t status;
};

/* blk_open resets and acknowledges the device at io_base, negotiates
 * features (the host's & wanted), sets up queue 0 and reads the capacity.
 * The caller sets DRIVER_OK (virtio_ready) when it has checked the device.
 * Precondition: vCPU 0 (palloc). Returns NULL or what went wrong. */
const char *blk_open(struct blk *b, uint64_t io_base, uint32_t wanted);

/* blk_submit starts one request: type VIRTIO_BLK_T_*, data[0, len) (len a
 * multiple of BLK_SECTOR; 0 for a flush). data must stay put until the
 * request completes. Returns 0 or BLK_ERR_NO_DESC. */
int blk_submit(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len);

/* blk_wait polls for the request in flight and returns its status byte
 * (VIRTIO_BLK_S_OK, ...), or a BLK_ERR_*. After BLK_ERR_TIMEOUT (no
 * completion within about timeout_ns) the request is still in flight:
 * call blk_wait again to go on waiting. */
int blk_wait(struct blk *b, uint64_t timeout_ns);

/* blk_rw is blk_submit then one blk_wait. */
int blk_rw(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len,
	   uint64_t timeout_ns);

/* blk_strerror names a BLK_ERR_* ("request timed out", ...). */
const char *blk_strerror(int err);

#endif
