// Package machine is the contract between a machine and the modes that
// replicate it: what any machine offers (Machine: its memory, the pages
// written since the last look, its state), and the two ways a mode drives
// one — freely, paused at epochs (Runner, checkpoint mode), or stop by stop
// (Stepper, replay mode). KVM's machines (package vmm/kvmmachine, on
// package vmm) and the software machine (package vmm/sim) implement it;
// machinetest holds the contract tests every implementation passes
// (machinetest.RunRunner, machinetest.RunStepper), run on each of them.
//
// Pages are numbered by their offset in guest RAM (Memory), and sets of
// them are Bitmaps.
package machine

import (
	"errors"
	"log/slog"
)

// Machine is what every machine offers a mode, whichever way it is driven.
//
// Precondition of every method: the guest does not run (a Runner is paused
// or not started; a Stepper is between calls), except where a method says
// otherwise.
type Machine interface {
	// Memory is guest RAM by page index, guest-physical from 0 for the
	// software machine and below the MMIO hole for KVM. The primary reads it
	// for a checkpoint; a backup's is written only by its checkpoint
	// receiver, while the guest does not run. The slice is stable for the
	// machine's life.
	Memory() []byte
	// Harvest ORs into dst (a bitmap of every page of Memory) at least every
	// page written since the previous Harvest, by the guest or by a device
	// (the VMM's own writes: received frames, disk reads), and starts a new
	// interval. A page written and not reported is a backup silently
	// corrupted; a page reported and not written only costs bandwidth.
	Harvest(dst *Bitmap) error
	// SaveState returns the machine's whole state but memory: vCPUs,
	// interrupt controllers, timers, devices.
	SaveState() ([]byte, error)
	// RestoreState loads a state SaveState produced on a machine built the
	// same way (here or on another host); it checks everything before it
	// changes anything, and refuses what does not match with a clear error.
	RestoreState(state []byte) error
}

// Runner is a machine that runs freely on its own vCPU threads and is
// paused to be checkpointed (checkpoint mode).
type Runner interface {
	Machine
	// Start runs a guest that has not run yet (a backup's, at failover).
	// A guest paused before Start starts paused: Resume runs it.
	Start() error
	// Pause stops every vCPU and device (after Pause returns, neither the
	// guest nor a device changes memory or state); Resume lets them go.
	// Pause may come before Start (see Start).
	Pause() error
	Resume() error
	// CopyLive copies page pfn into dst while the guest may be running
	// (pre-copy): the copy may be torn, and the write that tore it is in the
	// next Harvest.
	CopyLive(dst []byte, pfn uint64)
	// Stopped is closed when the guest stops for good (it powered off, or
	// the machine failed).
	Stopped() <-chan struct{}
}

// CopyOnWriter is a Runner that can copy pages after it resumes, so that
// an epoch's pause does not grow with its dirty pages.
type CopyOnWriter interface {
	Runner
	// CopyOnWrite, called while the machine is paused, starts copying
	// pages pfns (ascending) of Memory into dst, page i of pfns at
	// dst[i*PageSize:], as they are now: each page is copied before the
	// guest or a device next writes it, or sooner in the background (from
	// Resume on, so as not to compete with the rest of the pause), so the
	// machine may resume at once. wait returns once every page is in
	// dst (and then reports how many writes waited for a copy). On an
	// error nothing was started and the caller copies the pages itself;
	// where the host cannot (no userfaultfd write protection, say) the
	// error wraps ErrNoCopyOnWrite.
	CopyOnWrite(pfns []uint64, dst []byte) (wait func() (waited uint64, err error), err error)
}

// ErrNoCopyOnWrite is CopyOnWrite's error where the host cannot copy pages
// after the machine resumes.
var ErrNoCopyOnWrite = errors.New("this host cannot copy pages after the machine resumes")

// DirtyCounter is a Runner that can count, while its guest runs, the pages
// dirtied since the last Harvest without harvesting them: the primary
// sizes the coming pause's page buffer with it, so that the pause does not
// make one. The count may be a little short of the next Harvest's (pages
// written meanwhile). Where the machine cannot count, DirtySoFar fails.
type DirtyCounter interface {
	Runner
	DirtySoFar() (int, error)
}

// PauseSaver is a Runner that starts capturing its state as it pauses, so
// that the capture runs alongside the rest of the pause (the primary
// harvests and copies dirty pages meanwhile) instead of after it.
type PauseSaver interface {
	Runner
	// PauseSaving is Pause; the next SaveState before Resume returns the
	// state captured as the guest stopped, waiting for the capture to end
	// if need be.
	PauseSaving() error
}

// StateRecycler is a Machine that reuses the buffers of the states its
// SaveState returned: RecycleState gives one back once its caller is done
// with it, and nothing may read or write it after. A fresh buffer of tens
// of KiB cost a KVM pause 10-50 µs (its pages are faulted in); a recycled
// one is in memory already.
type StateRecycler interface {
	Machine
	RecycleState(state []byte)
}

// OperatorHold is a machine whose guest an operator can hold paused
// (ftckpt ctl pause: modes/node's wrappers between an engine and its
// machine). The engines carry Held to the backup — in each checkpoint in
// checkpoint mode, in the log in replay mode — and a backup going live
// calls Hold before its guest runs if the primary's operator held it, so
// that the guest stays paused across the failover until the operator
// resumes it on the new primary.
type OperatorHold interface {
	// Held says whether the operator holds the guest.
	Held() bool
	// Hold holds it, paused; holding a held guest is an error. A guest
	// not started yet starts paused.
	Hold() error
}

// KeepHeld holds m's guest for its operator (OperatorHold.Hold): a backup
// going live whose primary's operator held the guest paused calls it
// before the guest runs. It says on log what it did; where m has no
// operator's hold (nobody could resume the guest), or holding fails, the
// guest runs.
func KeepHeld(m any, log *slog.Logger) {
	h, ok := m.(OperatorHold)
	if !ok {
		log.Warn("the primary's operator held the guest paused; it runs here: this machine has no operator's hold to resume it")
		return
	}
	if err := h.Hold(); err != nil && !h.Held() { // held already: by this node's operator
		log.Warn("the primary's operator held the guest paused; it runs here", "err", err)
		return
	}
	log.Warn("the primary's operator held the guest paused: it stays paused until resumed (ftckpt ctl resume)")
}
