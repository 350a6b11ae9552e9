#include "virtio.h"

#include "rt.h"

const char *virtio_begin(struct virtio_dev *d, uint64_t io_base, uint32_t wanted)
{
	if (io_base == 0 || io_base > 0x10000 - VIRTIO_PCI_IO_SIZE)
		return "I/O base out of range";
	d->io = (uint16_t)io_base;
	outb(d->io + VIRTIO_PCI_STATUS, 0); /* reset */
	outb(d->io + VIRTIO_PCI_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	outb(d->io + VIRTIO_PCI_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	d->host_features = inl(d->io + VIRTIO_PCI_HOST_FEATURES);
	d->features = d->host_features & wanted;
	outl(d->io + VIRTIO_PCI_GUEST_FEATURES, d->features);
	return NULL;
}

const char *virtio_setup_queue(struct virtio_dev *d, unsigned idx, struct vq *q)
{
	unsigned num;
	void *mem;

	outw(d->io + VIRTIO_PCI_QUEUE_SEL, (uint16_t)idx);
	num = inw(d->io + VIRTIO_PCI_QUEUE_NUM);
	if (num == 0)
		return "queue does not exist";
	if (num > VQ_MAX || (num & (num - 1)) != 0)
		return "queue size is not a power of two up to 1024";
	if (inl(d->io + VIRTIO_PCI_QUEUE_PFN) != 0)
		return "queue already in use after reset";
	mem = palloc(vring_bytes(num), VRING_ALIGN);
	if (mem == NULL)
		return "no free memory for the ring";
	if (vq_init(q, mem, num) != 0)
		return "ring setup failed";
	outl(d->io + VIRTIO_PCI_QUEUE_PFN, (uint32_t)((uintptr_t)mem / VRING_ALIGN));
	return NULL;
}

void virtio_ready(struct virtio_dev *d)
{
	outb(d->io + VIRTIO_PCI_STATUS,
	     VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK);
}

void virtio_fail(struct virtio_dev *d)
{
	outb(d->io + VIRTIO_PCI_STATUS, VIRTIO_STATUS_FAILED);
}

void virtio_notify(struct virtio_dev *d, unsigned idx)
{
	outw(d->io + VIRTIO_PCI_QUEUE_NOTIFY, (uint16_t)idx);
}

void virtio_config_read(struct virtio_dev *d, unsigned off, void *buf, unsigned n)
{
	uint8_t *b = buf;

	for (unsigned i = 0; i < n; i++)
		b[i] = inb((uint16_t)(d->io + VIRTIO_PCI_CONFIG + off + i));
}
