package node

import (
	"sync"

	format "github.com/ftckpt/ftckpt/checkpoint"
)

// A node that hands its guest over (ftckpt ctl failover) with Rejoin goes
// on as the new primary's backup, and its machine's memory is the guest as
// it handed it over: the new primary's but for what the guest has written
// since. So that node keeps its machine open past its end (keepOrClose),
// and the backup it becomes copies that memory into its own machine and
// offers its range hashes (ckmode.Backup.HoldsMemory,
// replay.Backup.HoldsMemory): the new primary's pre-copy sends only the
// ranges that differ. The old machine is
// closed once copied, or at the latest when the next node ends (Run): for
// a moment the host holds the guest's memory twice.

// heldMemory is an ended node's machine, kept open for its memory until
// the next node is done with it (release, which closes the machine; safe
// to call more than once).
type heldMemory struct {
	mem     []byte
	once    sync.Once
	closeFn func()
}

func (h *heldMemory) release() {
	if h != nil {
		h.once.Do(h.closeFn)
	}
}

// keepOrClose, deferred by a node that may hand its guest over, over its
// machine's memory mem and what closes the machine, keeps the machine
// open as the memory it hands over (n.handed) if the node handed its guest
// over and rejoins, and closes it otherwise.
func (n *Node) keepOrClose(mem []byte, closeMachine func()) {
	if n.ops.handedOver.Load() && n.o.Rejoin != "" {
		n.handed = &heldMemory{mem: mem, closeFn: closeMachine}
		return
	}
	closeMachine()
}

// seedMemory copies the memory the node before this one handed over
// (o.held) into mem, a backup's machine's not yet started, if it is of the
// same size, and releases it; it reports whether it copied.
func (o *Options) seedMemory(mem []byte) bool {
	h := o.held
	if h == nil {
		return false
	}
	o.held = nil
	defer h.release()
	if len(h.mem) != len(mem) {
		return false
	}
	for off := 0; off < len(mem); off += seedChunk {
		// In chunks: one copy of a large memory cannot be preempted, and
		// a GC's stop-the-world would wait for it with every goroutine.
		copy(mem[off:min(off+seedChunk, len(mem))], h.mem[off:])
	}
	return true
}

// seedChunk is how much of a memory seedMemory copies at a time.
const seedChunk = 16 << 20

// The chunks are whole pages.
var _ [0]struct{} = [seedChunk % format.PageSize]struct{}{}
