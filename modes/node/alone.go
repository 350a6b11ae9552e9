package node

import (
	"context"

	"github.com/ftckpt/ftckpt/vmm"
)

// runAlone runs the guest unprotected: the free-running machine (checkpoint
// mode's, whatever o.Mode) with its network device sending straight to the
// backend and its disk device on the image, until the guest stops or ctx
// ends. It is the baseline the modes are measured against.
func (n *Node) runAlone(ctx context.Context) error {
	o := &n.o
	h, err := openHost(o, true)
	if err != nil {
		return err
	}
	defer h.close()
	var netDev vmm.FrameSink
	if o.hasNetDevice() {
		netDev = h.netSink()
	}
	diskDev := h.diskDev()
	r, err := newRunner(o, netDev, diskDev, false)
	if err != nil {
		return err
	}
	defer r.close()
	n.set(func(p *Parts) { p.Machine = r.Runner })
	if err := r.Start(); err != nil {
		return err
	}
	if h.backend != nil {
		if err := h.backend.Start(r.rx); err != nil {
			return err
		}
	}
	o.log().Info("running alone, unprotected", "machine", o.Machine)
	return r.waitOrCancel(ctx)
}
