package main

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
)

// These adapters put the output buffer between the guest's devices and
// their backends (DESIGN.md invariant 1): a device's output is held at the
// primary's current epoch and released when the backup acknowledges it.
// The disk's is ckmode.HeldDisk, which also keeps the writes for failover
// and holds FLUSH back until they are durable.

// refuseWait is a done context: a Hold with it queues when there is room
// and is refused otherwise, so a device never blocks a vCPU (which would
// stop the pause that the awaited ack needs); the device retries.
var refuseWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func holdErr(err error) error {
	if errors.Is(err, context.Canceled) {
		return vmm.ErrOutputFull
	}
	return err
}

// heldNet is a virtio-net device's FrameSink on a primary.
type heldNet struct {
	out *outbuf.Buffer
	pos func() uint64
}

func (h heldNet) SendFrame(f []byte) error {
	return holdErr(h.out.Hold(refuseWait, h.pos(), outbuf.NetFrame(f)))
}

// netTarget forwards frames to a backend chosen later: the output buffer's
// sink on a primary, or a backup's device until it goes live.
type netTarget struct {
	to atomic.Pointer[vmm.NetBackend]
}

func (n *netTarget) SendFrame(f []byte) error {
	if t := n.to.Load(); t != nil {
		return (*t).SendFrame(f)
	}
	return nil // not live: nothing leaves (a backup's guest does not run)
}

func (n *netTarget) set(b vmm.NetBackend) { n.to.Store(&b) }
