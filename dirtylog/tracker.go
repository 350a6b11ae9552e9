// Package dirtylog tells which guest pages changed since the last harvest.
//
// One Tracker interface covers two KVM mechanisms for the pages vCPUs write
// (the per-slot dirty bitmap with manual re-protection, and the per-vCPU
// dirty rings) and unions them with the VMM-side bitmap of pages the VMM
// wrote itself (vmm.GuestMemory.WriteAt). The result is a machine.Bitmap of RAM page
// indexes whose Runs are ready to copy.
//
// Blocks is the same idea for a mirrored disk: the blocks the guest wrote.
package dirtylog

import (
	"fmt"
	"os"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// Tracker reports dirtied pages, one harvest per epoch.
//
// Harvest is called while the machine is paused (or before it starts), never
// concurrently with itself: it ORs into dst (which has one bit per RAM page)
// every page written since the previous Harvest — by a vCPU, as KVM logged
// it, or by the VMM — re-protects exactly those pages in KVM so the next
// epoch's writes are logged again, and returns how many reports it took: a
// page both a vCPU and the VMM wrote counts twice (dst.Count is the set's
// size). A page written in one epoch and not the next is not reported in the
// next, with two exceptions, both over-reports: KVM logs a page when it
// handles the write fault, so a pause that comes before the store retires
// reports the page in the epoch before its write (and again in its own); and
// after a dirty ring overflowed (see collectStopped) the harvest reports
// every page.
//
// The first Harvest reports everything written since the tracker was made,
// including what the loader wrote.
type Tracker interface {
	Harvest(dst *machine.Bitmap) (int, error)
	// DirtySoFar counts the pages dirtied since the last Harvest while the
	// vCPUs run, harvesting nothing (the bitmap read without clearing, the
	// rings' published entries read without collecting). Not called
	// concurrently with Harvest.
	DirtySoFar() (int, error)
	// Close releases the tracker's resources. Precondition: the machine is
	// paused or stopped.
	Close() error
}

var (
	_ Tracker = (*bitmapTracker)(nil)
	_ Tracker = (*ringTracker)(nil)
)

// New makes the tracker for mode on m. A machine built with dirty rings can
// only use them, one without only the bitmap; ModeAuto takes what m was built
// for (RingEntriesFor made that choice before m existed). Precondition: m has not started (the ring-full
// handler must be installed before vCPUs run).
func New(m *vmm.Machine, mode Mode) (Tracker, error) {
	built := ModeBitmap
	if m.Config().DirtyRingEntries > 0 {
		built = ModeRing
	}
	switch mode {
	case ModeAuto:
		mode = built
	case ModeBitmap, ModeRing:
		if mode != built {
			return nil, fmt.Errorf("dirty tracking %v on a machine built for %v (vmm.Config.DirtyRingEntries = %d; see RingEntriesFor)",
				mode, built, m.Config().DirtyRingEntries)
		}
	default:
		return nil, fmt.Errorf("dirty tracking mode %v", mode)
	}
	if mode == ModeRing {
		return newRingTracker(m)
	}
	return newBitmapTracker(m)
}

// ProbeHost asks /dev/kvm what the choice of mechanism depends on.
func ProbeHost() (Host, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return Host{}, fmt.Errorf("probing KVM for dirty rings: %w", err)
	}
	defer f.Close()
	r, err := kvm.CheckExtension(f.Fd(), kvm.Capability(kvmapi.KVM_CAP_DIRTY_LOG_RING))
	if err != nil {
		return Host{}, fmt.Errorf("KVM_CHECK_EXTENSION KVM_CAP_DIRTY_LOG_RING: %w", err)
	}
	return Host{MaxRingBytes: int(r), RingsOverflow: kvmPVMLoaded()}, nil
}

// kvmPVMLoaded says whether this host's KVM is kvm-pvm (its module is
// loaded), whose dirty rings overflow (Host.RingsOverflow).
func kvmPVMLoaded() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}
