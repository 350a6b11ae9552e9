package checkpoint

import (
	"context"
	"errors"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
)

// HeldNet is a primary's guest network device's frame sink (the
// vmm.FrameSink its virtio-net device sends to): each frame is held in the
// output buffer at the primary's current epoch (Pos) and leaves when the
// backup has acknowledged that epoch (DESIGN.md invariant 1). A frame that
// does not fit is refused with vmm.ErrOutputFull, never waited for: the
// device leaves it in its ring and tries again, so that a vCPU never blocks
// on an ack that needs the guest paused (the next checkpoint) to come.
// HeldDisk is the disk's hold.
type HeldNet struct {
	Out *outbuf.Buffer
	Pos func() uint64
}

// SendFrame implements vmm.FrameSink (with refuseWait, as HeldDisk).
func (h HeldNet) SendFrame(f []byte) error {
	err := h.Out.Hold(refuseWait, h.Pos(), outbuf.NetFrame(f))
	if errors.Is(err, context.Canceled) {
		return vmm.ErrOutputFull
	}
	return err
}
