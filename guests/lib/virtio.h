/*
 * The legacy virtio-PCI transport (virtio 0.9.5) over BAR0 I/O ports, as
 * the VMM describes it in boot_info.devices: reset, ACKNOWLEDGE, DRIVER,
 * feature negotiation, queue setup by page frame number, DRIVER_OK.
 * Rings are driven with pure/vring.h. vq_init asks for no interrupts
 * (VRING_AVAIL_F_NO_INTERRUPT): completion is polled. A driver that wants
 * the device's INTx line (boot_info's irq) calls vq_interrupts and
 * acknowledges each interrupt by reading VIRTIO_PCI_ISR, which lowers the
 * line.
 */
#ifndef GUESTS_VIRTIO_H
#define GUESTS_VIRTIO_H

#include <stdint.h>

#include "vring.h"

/* Legacy virtio-PCI register offsets from BAR0 (no MSI-X). */
#define VIRTIO_PCI_HOST_FEATURES 0x00  /* 32, R */
#define VIRTIO_PCI_GUEST_FEATURES 0x04 /* 32, RW */
#define VIRTIO_PCI_QUEUE_PFN 0x08      /* 32, RW */
#define VIRTIO_PCI_QUEUE_NUM 0x0C      /* 16, R */
#define VIRTIO_PCI_QUEUE_SEL 0x0E      /* 16, RW */
#define VIRTIO_PCI_QUEUE_NOTIFY 0x10   /* 16, RW */
#define VIRTIO_PCI_STATUS 0x12         /* 8, RW */
#define VIRTIO_PCI_ISR 0x13            /* 8, R: reading clears it */
#define VIRTIO_PCI_CONFIG 0x14         /* device-specific configuration */
#define VIRTIO_PCI_IO_SIZE 0x40        /* ports the driver may touch */

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FAILED 0x80

struct virtio_dev {
	uint16_t io;
	uint32_t host_features;
	uint32_t features; /* negotiated: host_features & wanted */
};

/* virtio_begin resets the device at io_base, acknowledges it, and
 * negotiates features (host's & wanted). Returns NULL or what went wrong. */
const char *virtio_begin(struct virtio_dev *d, uint64_t io_base, uint32_t wanted);

/* virtio_setup_queue sizes queue idx from the device, places its rings in
 * palloc'd page-aligned memory, initialises q and gives the device the
 * PFN. Precondition: vCPU 0 (palloc). Returns NULL or what went wrong. */
const char *virtio_setup_queue(struct virtio_dev *d, unsigned idx, struct vq *q);

/* virtio_ready sets DRIVER_OK; virtio_fail sets FAILED. */
void virtio_ready(struct virtio_dev *d);
void virtio_fail(struct virtio_dev *d);

/* virtio_notify tells the device queue idx has new available buffers. */
void virtio_notify(struct virtio_dev *d, unsigned idx);

/* virtio_config_read copies n bytes of device configuration from offset
 * off, one byte-wide read each (as Linux's legacy driver does, so any
 * access width the device implements is enough). */
void virtio_config_read(struct virtio_dev *d, unsigned off, void *buf, unsigned n);

#endif
