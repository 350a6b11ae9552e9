package node

import (
	"context"

	"github.com/ftckpt/ftckpt/vmm"
)

// host is what a node opens on its host around the machine: the disk
// image and the network backend (a backup's opens only when it goes live).
// Either may be nil: the guest has none.
type host struct {
	o       *Options
	disk    *vmm.FileDisk
	backend vmm.NetBackend
	// diskUsers are stopped before the disk closes: what writes to it in
	// the background (a checkpoint primary's HeldDisk flusher).
	diskUsers []func()
}

// openHost opens o's disk image and, with net, its network backend.
func openHost(o *Options, net bool) (*host, error) {
	h := &host{o: o}
	var err error
	if h.disk, err = openDisk(o); err != nil {
		return nil, err
	}
	if net {
		if h.backend, err = openBackend(o); err != nil {
			h.close()
			return nil, err
		}
	}
	return h, nil
}

// goLive opens a backup's network backend once it is live (openBackendLive).
func (h *host) goLive(ctx context.Context) error {
	b, err := openBackendLive(ctx, h.o)
	h.backend = b
	return err
}

// close releases what is open. Precondition: the machine is closed (no
// device uses them any more).
func (h *host) close() {
	if h.backend != nil {
		h.backend.Close()
	}
	for _, stop := range h.diskUsers {
		stop()
	}
	if h.disk != nil {
		h.disk.Close()
	}
}

// stopBeforeDiskCloses has close call stop before it closes the disk.
func (h *host) stopBeforeDiskCloses(stop func()) { h.diskUsers = append(h.diskUsers, stop) }

// diskDev is the disk as a device's (nil without one: a nil *FileDisk in
// an interface would not be).
func (h *host) diskDev() vmm.Disk {
	if h.disk == nil {
		return nil
	}
	return h.disk
}

// diskSize is the disk's size, 0 without one (for the Hello).
func (h *host) diskSize() int64 {
	if h.disk == nil {
		return 0
	}
	return h.disk.Size()
}

// netSink is the backend as the output buffer's, unplugged without one.
func (h *host) netSink() interface{ SendFrame([]byte) error } {
	if h.backend == nil {
		return unplugged{}
	}
	return h.backend
}

// unplugged is the network of a guest given none: the software machine's
// network device is always there, and what it sends is lost, as from a NIC
// with no cable.
type unplugged struct{}

func (unplugged) SendFrame([]byte) error { return nil }
