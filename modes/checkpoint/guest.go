package checkpoint

import (
	"errors"

	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// KVMGuest is a vmm.Machine with its dirty-page tracker.
type KVMGuest struct {
	M       *vmm.Machine
	Tracker dirtylog.Tracker
}

// Memory implements machine.Runner.
func (g *KVMGuest) Memory() []byte { return g.M.Memory().Bytes() }

// CopyLive implements machine.Runner. vCPUs write guest memory behind Go's back,
// so a plain copy is what a live read is.
func (g *KVMGuest) CopyLive(dst []byte, pfn uint64) {
	copy(dst, g.M.Memory().Page(pfn))
}

// Pause implements machine.Runner.
func (g *KVMGuest) Pause() error { return g.M.Pause() }

// PauseSaving implements machine.PauseSaver: the vCPUs capture their state
// on their own threads as they stop, while the primary copies pages.
func (g *KVMGuest) PauseSaving() error { return g.M.PauseSaving() }

// Resume implements machine.Runner.
func (g *KVMGuest) Resume() error { return g.M.Resume() }

// Harvest implements machine.Runner. A machine built without a tracker
// (a backup's: it only receives) refuses.
func (g *KVMGuest) Harvest(dst *machine.Bitmap) error {
	if g.Tracker == nil {
		return errors.New("this machine does not track dirty pages")
	}
	_, err := g.Tracker.Harvest(dst)
	return err
}

// SaveState implements machine.Runner.
func (g *KVMGuest) SaveState() ([]byte, error) { return g.M.SaveState() }

// RestoreState implements machine.Runner.
func (g *KVMGuest) RestoreState(s []byte) error { return g.M.RestoreState(s) }

// Start implements machine.Runner.
func (g *KVMGuest) Start() error { return g.M.Start() }

// Stopped implements machine.Runner.
func (g *KVMGuest) Stopped() <-chan struct{} { return g.M.Stopped() }
