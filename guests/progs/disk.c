/*
 * disk: drives the first virtio-blk device with lib/blk.c (legacy
 * virtio-PCI, queue 0, polling, one request at a time: header, data,
 * status descriptors). Writes `records` records (default 64;
 * pure/record.h: magic, sequence number, payload derived from it, CRC-32)
 * for sequence numbers start.. (param `start`, default 0; the record for
 * seq s goes to sector s), reads them all back and verifies them:
 * "disk: wrote N verified N", or the first mismatch and power-off with
 * status 1. verify_only=1 skips the writes, to check after a restore or
 * failover that the data survived.
 */
#include "blk.h"
#include "record.h"
#include "rt.h"

#define TIMEOUT_NS (10 * 1000000000ull)

static struct blk blk;
static uint8_t data[BLK_SECTOR] __attribute__((aligned(BLK_SECTOR)));

static __attribute__((noreturn)) void fail(const char *what, uint64_t seq, uint64_t detail)
{
	printk("disk: FAILED seq %lu: %s (%lu)\n", (unsigned long)seq, what, (unsigned long)detail);
	virtio_fail(&blk.dev);
	power_off(1);
}

/* blk_sector runs one request for one sector and waits for it; it returns
 * the device's status byte. */
static uint8_t blk_sector(uint32_t type, uint64_t sector)
{
	int r = blk_rw(&blk, type, sector, data, BLK_SECTOR, TIMEOUT_NS);

	if (r < 0)
		fail(blk_strerror(r), sector, blk.detail);
	return (uint8_t)r;
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
	if ((err = blk_open(&blk, d->io_base, 0)) != NULL) {
		printk("disk: virtio-blk at io %lx: %s\n", (unsigned long)d->io_base, err);
		virtio_fail(&blk.dev);
		power_off(1);
	}
	capacity = blk.capacity;
	if (start > capacity || records > capacity - start) {
		printk("disk: records %lu..%lu do not fit in %lu sectors\n", (unsigned long)start,
		       (unsigned long)(start + records), (unsigned long)capacity);
		virtio_fail(&blk.dev);
		power_off(1);
	}
	if (!verify_only && (blk.dev.host_features & VIRTIO_BLK_F_RO)) {
		printk("disk: device is read-only; use verify_only=1\n");
		virtio_fail(&blk.dev);
		power_off(1);
	}
	virtio_ready(&blk.dev);

	for (uint64_t seq = start; !verify_only && seq < start + records; seq++) {
		uint8_t st;
		record_fill(data, seq);
		if ((st = blk_sector(VIRTIO_BLK_T_OUT, seq)) != VIRTIO_BLK_S_OK)
			fail("write status", seq, st);
		written++;
	}
	for (uint64_t seq = start; seq < start + records; seq++) {
		enum record_status rs;
		uint8_t st;
		if ((st = blk_sector(VIRTIO_BLK_T_IN, seq)) != VIRTIO_BLK_S_OK)
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
