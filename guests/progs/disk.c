/*
 * disk: a polling virtio-blk driver (legacy virtio-PCI, queue 0, one
 * request at a time: header, data, status descriptors). Writes `records`
 * records (default 64; pure/record.h: magic, sequence number, payload
 * derived from it, CRC-32) for sequence numbers start.. (param `start`,
 * default 0; the record for seq s goes to sector s), reads them all back
 * and verifies them: "disk: wrote N verified N", or the first mismatch
 * and power-off with status 1. verify_only=1 skips the writes, to check
 * after a restore or failover that the data survived.
 */
#include "record.h"
#include "rt.h"
#include "virtio.h"

#define VIRTIO_BLK_F_RO (1u << 5)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_S_OK 0
#define SECTOR_SIZE 512
#define TIMEOUT_NS (10 * 1000000000ull)

/* This mirrors struct virtio_blk_outhdr. */
struct blk_req_hdr {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
};

static struct virtio_dev dev;
static struct vq queue;
static struct blk_req_hdr hdr;
static volatile uint8_t status;
static uint8_t data[SECTOR_SIZE] __attribute__((aligned(SECTOR_SIZE)));

static __attribute__((noreturn)) void fail(const char *what, uint64_t seq, uint64_t detail)
{
	printk("disk: FAILED seq %lu: %s (%lu)\n", (unsigned long)seq, what, (unsigned long)detail);
	virtio_fail(&dev);
	power_off(1);
}

/* blk_rw runs one request for one sector and waits for it; it returns
 * the device's status byte. */
static uint8_t blk_rw(uint32_t type, uint64_t sector)
{
	struct vq_buf bufs[3] = {
		{ &hdr, sizeof(hdr), false },
		{ data, SECTOR_SIZE, type == VIRTIO_BLK_T_IN },
		{ (void *)&status, 1, true },
	};
	uint16_t head, done;
	uint32_t len;
	uint64_t started = 0;
	int r;

	hdr.type = type;
	hdr.ioprio = 0;
	hdr.sector = sector;
	status = 0xFF;
	if (vq_add(&queue, bufs, 3, &head) != 0)
		fail("no free descriptors", sector, queue.num_free);
	virtio_notify(&dev, 0);
	for (unsigned spins = 0; (r = vq_used(&queue, &done, &len)) == 0; spins++) {
		cpu_relax();
		if (spins % 4096 != 4095)
			continue;
		if (spins == 4095)
			started = clock_ns();
		else if (clock_ns() - started > TIMEOUT_NS)
			fail("request timed out", sector, type);
	}
	if (r < 0)
		fail("device broke the used ring", sector, queue.used->idx);
	if (done != head)
		fail("device completed an unknown request", sector, done);
	return status;
}

void guest_main(unsigned cpu, struct boot_info *bi)
{
	uint64_t records = param_u64(bi, "records", 64);
	uint64_t start = param_u64(bi, "start", 0);
	uint64_t verify_only = param_u64(bi, "verify_only", 0);
	const struct bootinfo_device *d = bootinfo_device(bi, FTCKPT_DEV_VIRTIO_BLK);
	uint64_t capacity, written = 0, verified = 0;
	const char *err;

	if (cpu != 0)
		park();
	printk("disk: start records=%lu start=%lu verify_only=%lu\n", (unsigned long)records,
	       (unsigned long)start, (unsigned long)verify_only);
	if (d == NULL) {
		printk("disk: no virtio-blk device in boot info\n");
		power_off(1);
	}
	if ((err = virtio_begin(&dev, d->io_base, 0)) != NULL ||
	    (err = virtio_setup_queue(&dev, 0, &queue)) != NULL) {
		printk("disk: virtio-blk at io %lx: %s\n", (unsigned long)d->io_base, err);
		virtio_fail(&dev);
		power_off(1);
	}
	virtio_config_read(&dev, 0, &capacity, sizeof(capacity)); /* le64 sectors */
	if (start > capacity || records > capacity - start) {
		printk("disk: records %lu..%lu do not fit in %lu sectors\n", (unsigned long)start,
		       (unsigned long)(start + records), (unsigned long)capacity);
		virtio_fail(&dev);
		power_off(1);
	}
	if (!verify_only && (dev.host_features & VIRTIO_BLK_F_RO)) {
		printk("disk: device is read-only; use verify_only=1\n");
		virtio_fail(&dev);
		power_off(1);
	}
	virtio_ready(&dev);

	for (uint64_t seq = start; !verify_only && seq < start + records; seq++) {
		uint8_t st;
		record_fill(data, seq);
		if ((st = blk_rw(VIRTIO_BLK_T_OUT, seq)) != VIRTIO_BLK_S_OK)
			fail("write status", seq, st);
		written++;
	}
	for (uint64_t seq = start; seq < start + records; seq++) {
		enum record_status rs;
		uint8_t st;
		if ((st = blk_rw(VIRTIO_BLK_T_IN, seq)) != VIRTIO_BLK_S_OK)
			fail("read status", seq, st);
		if ((rs = record_check(data, seq)) != RECORD_OK) {
			printk("disk: MISMATCH seq %lu: %s after %lu verified\n", (unsigned long)seq,
			       record_status_str(rs), (unsigned long)verified);
			power_off(1);
		}
		verified++;
	}
	printk("disk: wrote %lu verified %lu\n", (unsigned long)written, (unsigned long)verified);
}
