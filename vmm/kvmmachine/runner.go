package kvmmachine

import (
	"errors"
	"fmt"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/cow"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Tracker reports the pages of a machine's RAM written since its previous
// Harvest, by the vCPUs (KVM's dirty log) and by the VMM (the memory's own
// dirty bits), as package dirtylog's trackers do (see dirtylog.Tracker for
// the whole contract). It is given to this package's machines, which do
// not choose how pages are tracked.
type Tracker interface {
	// Harvest ORs into dst every page written since the previous Harvest
	// and re-arms the tracking of those pages; it returns how many reports
	// it took. Called while the machine's vCPUs do not run.
	Harvest(dst *machine.Bitmap) (int, error)
	// DirtySoFar counts the pages dirtied since the previous Harvest while
	// the vCPUs run, harvesting nothing.
	DirtySoFar() (int, error)
	// Close releases the tracker. Precondition: the machine is paused or
	// stopped.
	Close() error
}

// Runner is a vmm.Machine run freely on its vCPU threads, with its
// dirty-page tracker: checkpoint mode's machine on KVM
// (machine.PauseSaver).
type Runner struct {
	M *vmm.Machine
	// Tracker, nil on a machine that only receives checkpoints (a
	// backup's), is built on M before it starts.
	Tracker Tracker
	// copying is the snapshot CopyOnWrite took in this pause, whose
	// background copy Resume starts. Touched only by the goroutine that
	// pauses and resumes.
	copying *cow.Snapshot
}

var (
	_ machine.PauseSaver   = (*Runner)(nil)
	_ machine.CopyOnWriter = (*Runner)(nil)
	_ machine.DirtyCounter = (*Runner)(nil)
)

// Memory implements machine.Runner.
func (g *Runner) Memory() []byte { return g.M.Memory().Bytes() }

// CopyLive implements machine.Runner. vCPUs write guest memory behind Go's
// back, so a plain copy is what a live read is.
func (g *Runner) CopyLive(dst []byte, pfn uint64) {
	copy(dst, g.M.Memory().Page(pfn))
}

// CopyOnWrite implements machine.CopyOnWriter with userfaultfd write
// protection of the guest's memory (vmm.GuestMemory.CopyOnWrite): KVM
// faults a protected page in for a vCPU's write with the VMM's page
// tables, so the vCPU waits for the copy as a VMM thread would.
// Its background copy starts at Resume: started in the pause, it took a
// core from the vCPUs capturing their state (with 4 vCPUs on 2 cores, 8,192
// pages: pauses of 3–6 ms instead of 2).
func (g *Runner) CopyOnWrite(pfns []uint64, dst []byte) (func() (uint64, error), error) {
	s, err := g.M.Memory().CopyOnWrite(pfns, dst)
	if errors.Is(err, cow.ErrUnsupported) {
		return nil, fmt.Errorf("%w: %w", machine.ErrNoCopyOnWrite, err)
	}
	if err != nil {
		return nil, err
	}
	g.copying = s
	return func() (uint64, error) { err := s.Wait(); return s.Faults(), err }, nil
}

// Pause implements machine.Runner.
func (g *Runner) Pause() error { return g.M.Pause() }

// PauseSaving implements machine.PauseSaver: the vCPUs capture their state
// on their own threads as they stop, while the primary copies pages.
func (g *Runner) PauseSaving() error { return g.M.PauseSaving() }

// Resume implements machine.Runner, and starts the background copy of a
// CopyOnWrite of this pause.
func (g *Runner) Resume() error {
	err := g.M.Resume()
	if g.copying != nil {
		g.copying.Start()
		g.copying = nil
	}
	return err
}

// Harvest implements machine.Runner. A machine built without a tracker
// refuses.
func (g *Runner) Harvest(dst *machine.Bitmap) error {
	if g.Tracker == nil {
		return errors.New("this machine does not track dirty pages")
	}
	_, err := g.Tracker.Harvest(dst)
	return err
}

// DirtySoFar implements machine.DirtyCounter. A machine built without a
// tracker refuses.
func (g *Runner) DirtySoFar() (int, error) {
	if g.Tracker == nil {
		return 0, errors.New("this machine does not track dirty pages")
	}
	return g.Tracker.DirtySoFar()
}

// SaveState implements machine.Runner.
func (g *Runner) SaveState() ([]byte, error) { return g.M.SaveState() }

// RestoreState implements machine.Runner.
func (g *Runner) RestoreState(s []byte) error { return g.M.RestoreState(s) }

// Start implements machine.Runner.
func (g *Runner) Start() error { return g.M.Start() }

// Stopped implements machine.Runner.
func (g *Runner) Stopped() <-chan struct{} { return g.M.Stopped() }
