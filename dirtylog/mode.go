package dirtylog

import (
	"fmt"
	"strings"
)

// Mode selects the KVM mechanism that reports pages written by vCPUs.
// The zero Mode is invalid.
type Mode int

const (
	modeInvalid Mode = iota
	// ModeBitmap uses KVM_GET_DIRTY_LOG with manual re-protection
	// (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and KVM_CLEAR_DIRTY_LOG).
	ModeBitmap
	// ModeRing uses KVM's per-vCPU dirty rings (KVM_CAP_DIRTY_LOG_RING).
	ModeRing
	// ModeAuto picks one of the two by Choose.
	ModeAuto
)

func (m Mode) String() string {
	switch m {
	case ModeBitmap:
		return "bitmap"
	case ModeRing:
		return "ring"
	case ModeAuto:
		return "auto"
	}
	return fmt.Sprintf("invalid(%d)", int(m))
}

// ParseMode parses the --dirty-tracking flag: bitmap, ring or auto.
func ParseMode(s string) (Mode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "bitmap":
		return ModeBitmap, nil
	case "ring":
		return ModeRing, nil
	case "auto":
		return ModeAuto, nil
	}
	return modeInvalid, fmt.Errorf("dirty tracking %q: must be bitmap, ring or auto", s)
}

// DefaultRingEntries is the per-vCPU ring size used when the ring is chosen:
// 16384 entries (256 KiB per vCPU) hold 64 MiB of first writes per vCPU per
// epoch before a ring-full exit interrupts the vCPU.
const DefaultRingEntries = 16384

// AutoRingMinMemory is the memory size from which ModeAuto prefers the ring.
// Below it the bitmap's whole-memory scan costs less than collecting ring
// entries for the dirty counts an epoch typically has (see README-section.md
// for the measured curves).
const AutoRingMinMemory = 4 << 30

// Host is what the choice of mechanism depends on.
type Host struct {
	// MaxRingBytes is KVM_CHECK_EXTENSION(KVM_CAP_DIRTY_LOG_RING): the largest
	// ring in bytes, 0 if the host has no dirty ring.
	MaxRingBytes int
	// RingsOverflow says the KVM logs past a ring's soft limit before it
	// stops the vCPU: kvm-pvm, which logs every store it emulates, up to
	// 1,024 an exit. A guest writing tens of thousands of pages an epoch
	// then overflows its rings, and each such harvest reports every page
	// (collectStopped): at 64 GiB, a checkpoint of all of memory.
	RingsOverflow bool
}

// Choose resolves mode for a machine of memSize bytes on host: ModeAuto
// becomes ModeRing when the host has dirty rings that do not overflow and
// memSize is at least AutoRingMinMemory, else ModeBitmap. It refuses
// ModeRing on a host without rings.
func Choose(mode Mode, memSize int64, host Host) (Mode, error) {
	ringOK := host.MaxRingBytes >= DefaultRingEntries*ringEntrySize
	switch mode {
	case ModeBitmap:
		return ModeBitmap, nil
	case ModeRing:
		if !ringOK {
			return modeInvalid, fmt.Errorf("dirty tracking ring: this KVM's largest dirty ring is %d bytes, need %d",
				host.MaxRingBytes, DefaultRingEntries*ringEntrySize)
		}
		return ModeRing, nil
	case ModeAuto:
		if ringOK && !host.RingsOverflow && memSize >= AutoRingMinMemory {
			return ModeRing, nil
		}
		return ModeBitmap, nil
	}
	return modeInvalid, fmt.Errorf("dirty tracking mode %v", mode)
}

// RingEntriesFor is the vmm.Config.DirtyRingEntries a machine of memSize
// bytes needs for mode on host: DefaultRingEntries when mode resolves to the
// ring, else 0. The CLI sets it before building the machine, because KVM
// enables rings only before vCPUs exist.
func RingEntriesFor(mode Mode, memSize int64, host Host) (int, error) {
	m, err := Choose(mode, memSize, host)
	if err != nil {
		return 0, err
	}
	if m == ModeRing {
		return DefaultRingEntries, nil
	}
	return 0, nil
}
