#include "blk.h"

#include "rt.h"

const char *blk_open(struct blk *b, uint64_t io_base, uint32_t wanted)
{
	const char *err;

	if ((err = virtio_begin(&b->dev, io_base, wanted)) != NULL ||
	    (err = virtio_setup_queue(&b->dev, 0, &b->queue)) != NULL)
		return err;
	virtio_config_read(&b->dev, 0, &b->capacity, sizeof(b->capacity)); /* le64 sectors */
	return NULL;
}

int blk_submit(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len)
{
	struct vq_buf bufs[3];
	unsigned n = 0;

	bufs[n++] = (struct vq_buf){ &b->hdr, sizeof(b->hdr), false };
	if (len != 0)
		bufs[n++] = (struct vq_buf){ data, len, type == VIRTIO_BLK_T_IN };
	bufs[n++] = (struct vq_buf){ (void *)&b->status, 1, true };
	b->hdr.type = type;
	b->hdr.ioprio = 0;
	b->hdr.sector = sector;
	b->status = 0xFF;
	if (vq_add(&b->queue, bufs, n, &b->head) != 0) {
		b->detail = b->queue.num_free;
		return BLK_ERR_NO_DESC;
	}
	virtio_notify(&b->dev, 0);
	return 0;
}

int blk_wait(struct blk *b, uint64_t timeout_ns)
{
	uint16_t done;
	uint32_t len;
	uint64_t started = 0;
	int r;

	/* The clock costs two exits: look at it only every 4096 spins. */
	for (unsigned spins = 0; (r = vq_used(&b->queue, &done, &len)) == 0; spins++) {
		cpu_relax();
		if (spins % 4096 != 4095)
			continue;
		if (spins == 4095)
			started = clock_ns();
		else if (clock_ns() - started > timeout_ns) {
			b->detail = b->hdr.type;
			return BLK_ERR_TIMEOUT;
		}
	}
	if (r < 0) {
		b->detail = b->queue.used->idx;
		return BLK_ERR_RING;
	}
	if (done != b->head) {
		b->detail = done;
		return BLK_ERR_UNKNOWN;
	}
	return b->status;
}

int blk_rw(struct blk *b, uint32_t type, uint64_t sector, void *data, uint32_t len,
	   uint64_t timeout_ns)
{
	int r = blk_submit(b, type, sector, data, len);

	return r != 0 ? r : blk_wait(b, timeout_ns);
}

const char *blk_strerror(int err)
{
	switch (err) {
	case BLK_ERR_NO_DESC:
		return "no free descriptors";
	case BLK_ERR_TIMEOUT:
		return "request timed out";
	case BLK_ERR_RING:
		return "device broke the used ring";
	case BLK_ERR_UNKNOWN:
		return "device completed an unknown request";
	}
	return "unknown error";
}
