package checkpoint

import (
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/vmm"
)

// Guest is the machine a primary replicates and a backup keeps ready to
// run. KVMGuest is the implementation; the tests of the replication engine
// use a software machine where /dev/kvm is absent.
type Guest interface {
	// Memory is guest RAM by page index. The primary reads it while the
	// guest is paused; the backup's copy is written only by the checkpoint
	// receiver while the guest does not run.
	Memory() []byte
	// CopyLive copies page pfn into dst while the guest may be running
	// (pre-copy): the copy may be torn, and the write that tore it is in
	// the next harvest.
	CopyLive(dst []byte, pfn uint64)
	// Pause stops every vCPU and device; Resume lets them go.
	Pause() error
	Resume() error
	// Harvest ORs into dst every page dirtied since the previous Harvest.
	// Precondition: paused.
	Harvest(dst *dirtylog.Bitmap) error
	// SaveState and RestoreState carry the machine state (all but memory).
	// Precondition: paused or not started.
	SaveState() ([]byte, error)
	RestoreState(state []byte) error
	// Start runs a guest that has not run yet (the backup's, at failover).
	Start() error
	// Stopped is closed when the guest stops for good.
	Stopped() <-chan struct{}
}

// KVMGuest is a vmm.Machine with its dirty-page tracker.
type KVMGuest struct {
	M       *vmm.Machine
	Tracker dirtylog.Tracker
}

// Memory implements Guest.
func (g *KVMGuest) Memory() []byte { return g.M.Memory().Bytes() }

// CopyLive implements Guest. vCPUs write guest memory behind Go's back,
// so a plain copy is what a live read is.
func (g *KVMGuest) CopyLive(dst []byte, pfn uint64) {
	copy(dst, g.M.Memory().Page(pfn))
}

// Pause implements Guest.
func (g *KVMGuest) Pause() error { return g.M.Pause() }

// Resume implements Guest.
func (g *KVMGuest) Resume() error { return g.M.Resume() }

// Harvest implements Guest.
func (g *KVMGuest) Harvest(dst *dirtylog.Bitmap) error {
	_, err := g.Tracker.Harvest(dst)
	return err
}

// SaveState implements Guest.
func (g *KVMGuest) SaveState() ([]byte, error) { return g.M.SaveState() }

// RestoreState implements Guest.
func (g *KVMGuest) RestoreState(s []byte) error { return g.M.RestoreState(s) }

// Start implements Guest.
func (g *KVMGuest) Start() error { return g.M.Start() }

// Stopped implements Guest.
func (g *KVMGuest) Stopped() <-chan struct{} { return g.M.Stopped() }
