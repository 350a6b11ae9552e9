/*
 * kv: a UDP key-value server on a polling virtio-net driver (legacy
 * virtio-PCI: receive queue 0, transmit queue 1, the 10-byte
 * virtio_net_hdr without MRG_RXBUF in its own descriptor ahead of the
 * frame). Address `ip` (default 10.0.2.15), UDP port `port` (default
 * 7777), MAC from the device when it offers VIRTIO_NET_F_MAC, else
 * 52:54:00:12:34:56. It answers ARP requests for its address and serves
 * the text protocol of pure/kvstore.h; all frame handling is
 * pure/kvsrv.c. Prints a statistics line every `report` replies (default
 * 1000, 0 = never). Runs forever; no interrupts are used.
 */
#include "kvsrv.h"
#include "rt.h"
#include "virtio.h"

#define VIRTIO_NET_F_MAC (1u << 5)
#define RXQ 0
#define TXQ 1
#define NET_HDR_LEN 10 /* struct virtio_net_hdr, legacy, no MRG_RXBUF */
#define MAX_RX 32
#define MAX_TX 16

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

static __attribute__((noreturn)) void fail(const char *what)
{
	printk("kv: FAILED: %s\n", what);
	virtio_fail(&dev);
	power_off(1);
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

/* tx_get returns a free transmit buffer, waiting for completions if
 * every one is in flight. */
static unsigned tx_get(void)
{
	for (;;) {
		for (unsigned i = 0; i < ntx; i++)
			if (!tx_busy[i])
				return i;
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
	virtio_notify(&dev, TXQ);
}

static unsigned min_u(unsigned a, unsigned b)
{
	return a < b ? a : b;
}

void guest_main(unsigned cpu, struct boot_info *bi)
{
	const struct bootinfo_device *d = bootinfo_device(bi, FTCKPT_DEV_VIRTIO_NET);
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
	if ((err = virtio_begin(&dev, d->io_base, VIRTIO_NET_F_MAC)) != NULL ||
	    (err = virtio_setup_queue(&dev, RXQ, &rxq)) != NULL ||
	    (err = virtio_setup_queue(&dev, TXQ, &txq)) != NULL) {
		printk("kv: virtio-net at io %lx: %s\n", (unsigned long)d->io_base, err);
		virtio_fail(&dev);
		power_off(1);
	}
	if (dev.features & VIRTIO_NET_F_MAC)
		virtio_config_read(&dev, 0, nif.mac, ETH_ALEN);
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
	for (unsigned i = 0; i < nrx; i++)
		post_rx(i);
	virtio_ready(&dev);
	virtio_notify(&dev, RXQ);
	printk("kv: start ip=%s port=%u mac=%02x:%02x:%02x:%02x:%02x:%02x rx=%u tx=%u\n", ip_str,
	       nif.port, nif.mac[0], nif.mac[1], nif.mac[2], nif.mac[3], nif.mac[4], nif.mac[5],
	       nrx, ntx);

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
			if (out != 0)
				tx_send(t, out);
			post_rx((unsigned)slot);
			reposted++;
		}
		if (r < 0)
			fail("device broke the receive ring");
		if (reposted != 0)
			virtio_notify(&dev, RXQ);
		reclaim_tx();
		if (report != 0 && srv.replies >= next_report) {
			printk("kv: replies=%lu requests=%lu arp=%lu drops=%lu\n",
			       (unsigned long)srv.replies, (unsigned long)srv.verdicts[NET_UDP],
			       (unsigned long)srv.verdicts[NET_ARP_REQUEST],
			       (unsigned long)kvsrv_drops(&srv));
			next_report = srv.replies + report;
		}
		cpu_relax();
	}
}
