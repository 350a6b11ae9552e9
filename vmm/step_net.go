package vmm

// ReceiveNow is a stepped machine's receive (replay): frame goes into the
// receive buffer the guest posted, now, or is dropped (no buffer posted,
// the device not ready, the buffer too small, a runt or oversize frame), as
// a NIC drops. It reports whether the frame was delivered.
//
// Nothing is left in the device's host queue: that queue is not part of the
// saved state, so a frame waiting there would reach the guest of a machine
// that keeps running and not of one restored from the same state. Unlike
// Poll it does not retry transmits: outputs happen only in exits.
func (n *VirtioNet) ReceiveNow(frame []byte) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dropQueuedLocked()
	if !n.Receive(frame) {
		return false
	}
	before := n.rxFrames.Load()
	n.deliverLocked()
	n.dropQueuedLocked()
	return n.rxFrames.Load() != before
}

// dropQueuedLocked empties the host receive queue, counting drops.
func (n *VirtioNet) dropQueuedLocked() {
	for n.rx.len() > 0 {
		n.rx.pop()
		n.rxDropped.Add(1)
	}
}
