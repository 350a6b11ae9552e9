/*
 * kv: a UDP key-value server on a virtio-net driver (legacy virtio-PCI:
 * receive queue 0, transmit queue 1, the 10-byte virtio_net_hdr without
 * MRG_RXBUF in its own descriptor ahead of the frame). Address `ip`
 * (default 10.0.2.15), UDP port `port` (default 7777), MAC from the device
 * when it offers VIRTIO_NET_F_MAC, else 52:54:00:12:34:56. It answers ARP
 * requests for its address and serves the text protocol of
 * pure/kvstore.h; all frame handling is pure/kvsrv.c. Prints a statistics
 * line every `report` replies (default 1000, 0 = never). Runs forever.
 *
 * Idle, it sleeps in "sti; hlt" until the device's receive interrupt
 * (its legacy IRQ from the boot info, through the 8259 PIC remapped to
 * vector 32; with the in-kernel irqchip the BSP's LAPIC passes it on
 * LINT0 in ExtINT mode, as in tick.c). Interrupts are enabled only in
 * that halt: the main loop runs with IF clear and does all the work; the
 * handler only reads the virtio ISR register, which acknowledges the
 * interrupt and lowers the line, and the dispatcher sends the EOI.
 *
 * With a virtio-blk device (lib/blk.c) the table lives on the disk, in
 * the layout of pure/kvtable.h: loaded at boot from the newer valid of
 * its two copies ("kv: loaded N keys ..." or "kv: new table"), and after
 * every update, before the reply is sent: if `journal` > 0 (default 0)
 * the update's journal sector goes to sector 128 + updates % journal;
 * every `persist_every` updates (default 4, 0 = never) the whole table
 * goes to the copy the last table write did not use; if `flush` is 1
 * (default 0) a VIRTIO_BLK_T_FLUSH follows. Without a disk nothing of
 * this happens. Disk requests are polled (lib/blk.c), interrupts off.
 */
#include "blk.h"
#include "irq.h"
#include "kvsrv.h"
#include "kvtable.h"
#include "rt.h"
#include "virtio.h"

#define VIRTIO_NET_F_MAC (1u << 5)
#define RXQ 0
#define TXQ 1
#define NET_HDR_LEN 10 /* struct virtio_net_hdr, legacy, no MRG_RXBUF */
#define MAX_RX 32
#define MAX_TX 16
#define DISK_WAIT_NS (10 * 1000000000ull) /* a console line per 10 s a disk request waits */
#define TABLE_BUF (KVT_MAX_SECTORS * KVD_SECTOR)

/* One buffer pair: header and frame, both owned by the device while its
 * chain is in flight. */
struct netbuf {
	uint8_t hdr[NET_HDR_LEN];
	uint8_t frame[ETH_MAX_FRAME];
};

static struct virtio_dev dev;
static struct vq rxq, txq;
static struct kvsrv srv;
static struct netbuf *rx_bufs, *tx_bufs;
static unsigned nrx, ntx;
static int16_t rx_slot[VQ_MAX]; /* by chain head: index into rx_bufs */
static int16_t tx_slot[VQ_MAX]; /* by chain head: index into tx_bufs */
static bool tx_busy[MAX_TX];
static bool tx_unnotified; /* replies queued since the last transmit notify */

/* The disk, when the boot info has one. */
static struct blk blk;
static bool have_disk;
static uint64_t journal, persist_every, unsaved;
static bool flush;
static unsigned next_copy; /* the table copy the next table write goes to */
static uint8_t *table_buf; /* TABLE_BUF bytes */
static uint8_t journal_buf[KVD_SECTOR] __attribute__((aligned(KVD_SECTOR)));

static __attribute__((noreturn)) void fail(const char *what)
{
	printk("kv: FAILED: %s\n", what);
	virtio_fail(&dev);
	power_off(1);
}

/* disk_io runs one disk request and waits for it, however long the
 * device takes (it may hold writes back under back-pressure); a failed
 * request stops the guest, since it cannot persist what it acknowledges. */
static void disk_io(uint32_t type, uint64_t sector, void *data, uint32_t len)
{
	int r = blk_submit(&blk, type, sector, data, len);

	if (r == 0)
		while ((r = blk_wait(&blk, DISK_WAIT_NS)) == BLK_ERR_TIMEOUT)
			printk("kv: disk request type %u sector %lu still waiting\n", type,
			       (unsigned long)sector);
	if (r == VIRTIO_BLK_S_OK)
		return;
	if (r < 0)
		printk("kv: FAILED: disk request type %u sector %lu: %s (%lu)\n", type,
		       (unsigned long)sector, blk_strerror(r), (unsigned long)blk.detail);
	else
		printk("kv: FAILED: disk request type %u sector %lu: status %d\n", type,
		       (unsigned long)sector, r);
	virtio_fail(&blk.dev);
	virtio_fail(&dev);
	power_off(1);
}

/* load_table reads both table copies' headers and loads the newer valid
 * copy into srv.kv, falling back to the other; with neither it keeps the
 * empty table. A copy that is not there at all (bad magic: a fresh disk)
 * is not worth a line; one that is there and broken is. */
static void load_table(void)
{
	struct kvt_header h[KVT_COPIES];
	enum kvt_status st[KVT_COPIES];
	unsigned first;

	for (unsigned c = 0; c < KVT_COPIES; c++) {
		disk_io(VIRTIO_BLK_T_IN, c * KVT_COPY_SECTORS, table_buf, KVD_SECTOR);
		st[c] = kvt_header(table_buf, KVD_SECTOR, &h[c]);
		if (st[c] != KVT_OK && st[c] != KVT_BAD_MAGIC)
			printk("kv: table copy %u: %s\n", c, kvt_status_str(st[c]));
	}
	first = st[1] == KVT_OK && (st[0] != KVT_OK || h[1].updates > h[0].updates);
	for (unsigned i = 0; i < KVT_COPIES; i++) {
		unsigned c = i == 0 ? first : 1 - first;
		enum kvt_status r;
		if (st[c] != KVT_OK)
			continue;
		disk_io(VIRTIO_BLK_T_IN, c * KVT_COPY_SECTORS, table_buf, h[c].sectors * KVD_SECTOR);
		r = kvt_decode(&srv.kv, table_buf, h[c].sectors * KVD_SECTOR);
		if (r == KVT_OK) {
			printk("kv: loaded %u keys (copy %u, update %lu)\n", srv.kv.count, c,
			       (unsigned long)srv.kv.updates);
			next_copy = 1 - c;
			return;
		}
		printk("kv: table copy %u: %s\n", c, kvt_status_str(r));
	}
	kv_init(&srv.kv);
	next_copy = 0;
	printk("kv: new table\n");
}

/* disk_setup brings up the virtio-blk device d, checks it can hold the
 * table and the journal, and loads the table. */
static void disk_setup(const struct boot_info *bi, const struct bootinfo_device *d)
{
	const char *err;

	journal = param_u64(bi, "journal", 0);
	persist_every = param_u64(bi, "persist_every", 4);
	flush = param_u64(bi, "flush", 0) != 0;
	if ((err = blk_open(&blk, d->io_base, VIRTIO_BLK_F_FLUSH)) != NULL) {
		printk("kv: virtio-blk at io %lx: %s\n", (unsigned long)d->io_base, err);
		virtio_fail(&blk.dev);
		fail("disk setup");
	}
	if (blk.dev.host_features & VIRTIO_BLK_F_RO) {
		virtio_fail(&blk.dev);
		fail("the disk is read-only");
	}
	if (blk.capacity < KVD_JOURNAL_BASE || journal > blk.capacity - KVD_JOURNAL_BASE) {
		printk("kv: a disk of %lu sectors cannot hold the table copies and the journal "
		       "(%u + journal=%lu sectors)\n",
		       (unsigned long)blk.capacity, KVD_JOURNAL_BASE, (unsigned long)journal);
		virtio_fail(&blk.dev);
		fail("disk too small");
	}
	if (flush && !(blk.dev.features & VIRTIO_BLK_F_FLUSH)) {
		/* As Linux does: a disk without a flush command is taken to
		 * be write-through. */
		printk("kv: the disk offers no flush; replies wait for the writes only\n");
		flush = false;
	}
	if ((table_buf = palloc(TABLE_BUF, KVD_SECTOR)) == NULL)
		fail("no free memory for the table buffer");
	virtio_ready(&blk.dev);
	have_disk = true;
	load_table();
}

/* persist puts the update just made on the disk: its journal sector, the
 * table when due, then a flush; the caller sends the reply afterwards. */
static void persist(void)
{
	if (journal != 0) {
		kvj_encode(&srv.kv, journal_buf);
		disk_io(VIRTIO_BLK_T_OUT, kvd_journal_sector(srv.kv.updates, journal), journal_buf,
			KVD_SECTOR);
	}
	if (persist_every != 0 && ++unsaved >= persist_every) {
		size_t len = kvt_encode(&srv.kv, table_buf, TABLE_BUF);
		if (len == 0)
			fail("the table does not fit its buffer");
		unsaved = 0;
		disk_io(VIRTIO_BLK_T_OUT, next_copy * KVT_COPY_SECTORS, table_buf, (uint32_t)len);
		next_copy = 1 - next_copy;
	}
	if (flush)
		disk_io(VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
}

static void post_rx(unsigned slot)
{
	struct vq_buf bufs[2] = {
		{ rx_bufs[slot].hdr, NET_HDR_LEN, true },
		{ rx_bufs[slot].frame, ETH_MAX_FRAME, true },
	};
	uint16_t head;

	if (vq_add(&rxq, bufs, 2, &head) != 0)
		fail("receive queue overflow");
	rx_slot[head] = (int16_t)slot;
}

static void reclaim_tx(void)
{
	uint16_t head;
	uint32_t len;
	int r;

	while ((r = vq_used(&txq, &head, &len)) == 1) {
		if (tx_slot[head] < 0)
			fail("transmit completion for an unknown buffer");
		tx_busy[tx_slot[head]] = false;
		tx_slot[head] = -1;
	}
	if (r < 0)
		fail("device broke the transmit ring");
}

/* tx_notify tells the device about the replies queued since it last did. */
static void tx_notify(void)
{
	if (tx_unnotified) {
		tx_unnotified = false;
		virtio_notify(&dev, TXQ);
	}
}

/* tx_get returns a free transmit buffer, waiting for completions if
 * every one is in flight. */
static unsigned tx_get(void)
{
	for (;;) {
		for (unsigned i = 0; i < ntx; i++)
			if (!tx_busy[i])
				return i;
		tx_notify();
		reclaim_tx();
		cpu_relax();
	}
}

static void tx_send(unsigned slot, size_t len)
{
	struct vq_buf bufs[2] = {
		{ tx_bufs[slot].hdr, NET_HDR_LEN, false },
		{ tx_bufs[slot].frame, (uint32_t)len, false },
	};
	uint16_t head;

	if (vq_add(&txq, bufs, 2, &head) != 0)
		fail("transmit queue overflow");
	tx_busy[slot] = true;
	tx_slot[head] = (int16_t)slot;
	tx_unnotified = true;
}

static unsigned min_u(unsigned a, unsigned b)
{
	return a < b ? a : b;
}

/* on_net_irq acknowledges the device's interrupt: reading ISR clears it
 * and lowers the (level) line, so the device's next used buffer raises a
 * new edge at the PIC. The main loop does the work. */
static void on_net_irq(struct irq_frame *f)
{
	(void)f;
	(void)inb(dev.io + VIRTIO_PCI_ISR);
}

/* irq_setup installs the IDT and the handler for the device's IRQ line,
 * initialises the PIC (and, with the in-kernel irqchip, the BSP's LAPIC
 * LINT0) and unmasks that line. It runs before the device is reset, so
 * no edge of the line is lost to the PIC's initialisation; interrupts
 * stay off (IF clear) until the main loop halts. */
static void irq_setup(const struct boot_info *bi, const struct bootinfo_device *d)
{
	if (d->irq >= 16 || d->irq == 2) {
		printk("kv: virtio-net IRQ %u is not a PIC line\n", d->irq);
		power_off(1);
	}
	idt_init();
	idt_set_handler(PIC_VECTOR_BASE + d->irq, on_net_irq);
	pic_init();
	if (bi->flags & FTCKPT_BOOT_IRQCHIP)
		lapic_lint0_extint();
	pic_unmask(d->irq);
}

void guest_main(unsigned cpu, struct boot_info *bi)
{
	const struct bootinfo_device *d = bootinfo_device(bi, FTCKPT_DEV_VIRTIO_NET);
	const struct bootinfo_device *disk = bootinfo_device(bi, FTCKPT_DEV_VIRTIO_BLK);
	const char *ip_str = param_str(bi, "ip", "10.0.2.15");
	uint64_t port = param_u64(bi, "port", 7777);
	uint64_t report = param_u64(bi, "report", 1000);
	struct net_if nif = { .mac = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 } };
	uint64_t next_report = report;
	const char *err;

	if (cpu != 0)
		park();
	if (!parse_ipv4(ip_str, bounded_strlen(ip_str, FTCKPT_PARAM_VALUE), &nif.ip)) {
		printk("kv: ip=%s is not a dotted IPv4 address\n", ip_str);
		power_off(1);
	}
	if (port == 0 || port > 65535) {
		printk("kv: port=%lu is out of range\n", (unsigned long)port);
		power_off(1);
	}
	nif.port = (uint16_t)port;
	if (d == NULL) {
		printk("kv: no virtio-net device in boot info\n");
		power_off(1);
	}
	irq_setup(bi, d);
	if ((err = virtio_begin(&dev, d->io_base, VIRTIO_NET_F_MAC)) != NULL ||
	    (err = virtio_setup_queue(&dev, RXQ, &rxq)) != NULL ||
	    (err = virtio_setup_queue(&dev, TXQ, &txq)) != NULL) {
		printk("kv: virtio-net at io %lx: %s\n", (unsigned long)d->io_base, err);
		virtio_fail(&dev);
		power_off(1);
	}
	if (dev.features & VIRTIO_NET_F_MAC)
		virtio_config_read(&dev, 0, nif.mac, ETH_ALEN);
	/* Received frames interrupt; transmit completions do not (tx_get
	 * polls for them, only when every buffer is in flight). */
	vq_interrupts(&rxq, true);
	nrx = min_u(rxq.num / 2, MAX_RX);
	ntx = min_u(txq.num / 2, MAX_TX);
	if (nrx == 0 || ntx == 0)
		fail("queues too small for header+frame chains");
	rx_bufs = palloc(nrx * sizeof(struct netbuf), 64);
	tx_bufs = palloc(ntx * sizeof(struct netbuf), 64);
	if (rx_bufs == NULL || tx_bufs == NULL)
		fail("no free memory for buffers");
	for (unsigned i = 0; i < VQ_MAX; i++)
		rx_slot[i] = tx_slot[i] = -1;
	kvsrv_init(&srv, &nif);
	if (disk != NULL)
		disk_setup(bi, disk);
	for (unsigned i = 0; i < nrx; i++)
		post_rx(i);
	virtio_ready(&dev);
	virtio_notify(&dev, RXQ);
	printk("kv: start ip=%s port=%u mac=%02x:%02x:%02x:%02x:%02x:%02x rx=%u tx=%u", ip_str,
	       nif.port, nif.mac[0], nif.mac[1], nif.mac[2], nif.mac[3], nif.mac[4], nif.mac[5],
	       nrx, ntx);
	if (have_disk)
		printk(" disk=%lu journal=%lu persist_every=%lu flush=%u", (unsigned long)blk.capacity,
		       (unsigned long)journal, (unsigned long)persist_every, (unsigned)flush);
	print("\n");

	for (;;) {
		unsigned reposted = 0;
		uint16_t head;
		uint32_t len;
		int r = 0;

		/* At most one ring's worth per pass, so that under sustained
		 * load the refill notify, completions and reports still run. */
		while (reposted < nrx && (r = vq_used(&rxq, &head, &len)) == 1) {
			int slot = rx_slot[head];
			unsigned t;
			uint64_t updates = srv.kv.updates;
			size_t out;

			if (slot < 0)
				fail("receive completion for an unknown buffer");
			rx_slot[head] = -1;
			t = tx_get();
			/* A length below the header or beyond the buffer is the
			 * device's error; kvsrv drops such frames as short/oversize. */
			out = kvsrv_frame(&srv, rx_bufs[slot].frame,
					  len < NET_HDR_LEN ? 0 : len - NET_HDR_LEN,
					  tx_bufs[t].frame, ETH_MAX_FRAME);
			/* Output commit for the disk: the update is on it (and
			 * flushed) before anyone hears of it. */
			if (have_disk && srv.kv.updates != updates)
				persist();
			if (out != 0)
				tx_send(t, out);
			post_rx((unsigned)slot);
			reposted++;
		}
		if (r < 0)
			fail("device broke the receive ring");
		if (report != 0 && srv.replies >= next_report) {
			printk("kv: replies=%lu requests=%lu arp=%lu drops=%lu\n",
			       (unsigned long)srv.replies, (unsigned long)srv.verdicts[NET_UDP],
			       (unsigned long)srv.verdicts[NET_ARP_REQUEST],
			       (unsigned long)kvsrv_drops(&srv));
			next_report = srv.replies + report;
		}
		/* The pass's replies go out with one notify, the last exit
		 * before the next pass (and, idle, before the HLT): in replay
		 * mode a reply is released once the backup has the log up to
		 * it, and the client's next request then finds the guest
		 * halted, delivered at the HLT exit rather than at a kicked
		 * stop the backup must find by single steps. */
		if (reposted != 0)
			virtio_notify(&dev, RXQ);
		tx_notify();
		reclaim_tx();
		/* Idle: no frame was waiting when vq_used last looked, and IF
		 * has been clear since. A frame the device delivers after that
		 * look raises an edge that waits in the PIC, and the STI
		 * shadow delivers it to the HLT instead of before it. */
		if (reposted == 0) {
			sti_hlt();
			cli();
		}
	}
}
