package vmm

import (
	"sync/atomic"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
)

// kvm_run's first 32-bit word holds request_interrupt_window (byte 0) and
// immediate_exit (byte 1), both written by userspace. A Stepper's owner
// writes the first and any goroutine's Kick the second, so both are written
// with atomic read-modify-writes of the whole word: neither loses the
// other's store.
const (
	windowBit        = uint32(0xff) << (8 * kvmapi.RunRequestInterruptWindowOffset)
	windowOn         = uint32(1) << (8 * kvmapi.RunRequestInterruptWindowOffset)
	immediateExitBit = uint32(0xff) << (8 * kvmapi.RunImmediateExitOffset)
	immediateExitOn  = uint32(1) << (8 * kvmapi.RunImmediateExitOffset)
)

// kickState is the handshake between Kick (any goroutine) and the loop that
// enters the guest (the vCPU thread).
//
// Kick stores req, then sets immediate_exit, then signals the thread. The
// loop, before each KVM_RUN, clears immediate_exit and then reads req,
// setting immediate_exit again if a kick is pending. All four are
// sequentially consistent atomics, so whatever the interleaving either the
// loop sees req (and enters with immediate_exit set, returning at once) or
// Kick's immediate_exit store comes after the loop's clear and stays set for
// the KVM_RUN, whose entry sees it or, if the guest already runs, is
// interrupted by the signal. A KVM_RUN that returns EINTR with no kick
// pending was interrupted by another signal (Go's runtime sends some) and is
// entered again.
type kickState struct {
	// word is kvm_run's first word.
	word *uint32
	// req is set by Kick and consumed by the EINTR it causes.
	req atomic.Bool
}

// kick asks the run in progress, or else the next one, to return.
func (k *kickState) kick() {
	k.req.Store(true)
	atomic.OrUint32(k.word, immediateExitOn)
}

// enter calls run (one KVM_RUN) until it returns an exit or the EINTR of a
// kick. kicked reports the latter; the kick is consumed.
func (k *kickState) enter(run func() (eintr bool, err error)) (kicked bool, err error) {
	for {
		atomic.AndUint32(k.word, ^immediateExitBit)
		if k.req.Load() {
			atomic.OrUint32(k.word, immediateExitOn)
		}
		eintr, err := run()
		if err != nil || !eintr {
			return false, err
		}
		if k.req.Swap(false) {
			return true, nil
		}
	}
}

// setWindow sets or clears kvm_run.request_interrupt_window.
func (k *kickState) setWindow(on bool) {
	if on {
		atomic.OrUint32(k.word, windowOn)
	} else {
		atomic.AndUint32(k.word, ^windowBit)
	}
}

// window reports kvm_run.request_interrupt_window.
func (k *kickState) window() bool { return atomic.LoadUint32(k.word)&windowBit != 0 }

// forceImmediateExit makes the next KVM_RUN return at once, after
// completing a pending I/O: how the Stepper settles the vCPU before its
// state is read or replaced.
func (k *kickState) forceImmediateExit() { atomic.OrUint32(k.word, immediateExitOn) }
