package replay

import "github.com/ftckpt/ftckpt/vmm/machine"

// HoldWatcher is a machine.OperatorHold whose changes an engine can wait
// for: HoldChanged's channel receives after each Hold and Release. A
// primary whose guest halts waits on it too, so that it logs a change at
// once instead of at the guest's next wake-up (modes/node's holdStepper is
// one).
type HoldWatcher interface {
	machine.OperatorHold
	HoldChanged() <-chan struct{}
}

// logHold logs whether the operator holds the guest (EntryHeld), where
// the machine says (machine.OperatorHold), if that changed since the last
// EntryHeld or, after a sync, if it is held: a backup that goes live keeps
// the guest held as the last one says. The hold's Hold and Release kick
// the guest, so that each comes through a boundary, here, before the
// guest would run again.
func (p *Primary) logHold() {
	h, ok := p.m.(machine.OperatorHold)
	if !ok || !p.recording {
		return
	}
	if held := h.Held(); held != p.loggedHeld {
		p.append(Entry{Type: EntryHeld, Held: held})
		p.loggedHeld = held
		p.holdLSN.Store(p.lsn)
	}
}

// HoldLSN is the LSN of the last EntryHeld (0: none yet): once the backup
// acknowledges it (Stats.Acked), it would go live with the guest held or
// not as that entry says. Safe from any goroutine.
func (p *Primary) HoldLSN() uint64 { return p.holdLSN.Load() }
