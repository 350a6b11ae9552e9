package checkpoint

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every rejection wraps exactly one of these (test with
// errors.Is); the message around it says what was wrong and where.
var (
	// Framing of the checkpoint as a whole.
	ErrTruncated     = errors.New("checkpoint truncated")
	ErrBadMagic      = errors.New("not a checkpoint (bad magic)")
	ErrVersion       = errors.New("unsupported checkpoint format version")
	ErrNoCommit      = errors.New("checkpoint commit marker missing")
	ErrChecksum      = errors.New("checkpoint checksum mismatch")
	ErrTrailingBytes = errors.New("bytes after the last section")

	// Header fields.
	ErrBadHeader  = errors.New("bad checkpoint header")
	ErrBadKind    = errors.New("invalid checkpoint kind")
	ErrBadFlags   = errors.New("invalid checkpoint flags")
	ErrBadMemSize = errors.New("invalid guest memory size")

	// Sections.
	ErrUnknownSection   = errors.New("unknown section")
	ErrSectionVersion   = errors.New("unsupported section version")
	ErrDuplicateSection = errors.New("duplicate section")
	ErrMissingSection   = errors.New("required section missing")
	ErrForbiddenSection = errors.New("section not allowed in this kind of checkpoint")
	ErrBadSection       = errors.New("malformed section")

	// Pages.
	ErrBadPage       = errors.New("malformed page record")
	ErrDuplicatePage = errors.New("duplicate page")
	ErrPageRange     = errors.New("page number out of range")

	// Disk writes.
	ErrBadDiskWrite = errors.New("malformed disk write")
	ErrBadDiskBlock = errors.New("malformed disk block")

	// Against the backup's state.
	ErrMemSizeMismatch = errors.New("checkpoint is for a different guest memory size")
	ErrDiskMismatch    = errors.New("checkpoint is for a different disk")
	ErrEpochOrder      = errors.New("checkpoint out of order")
	ErrStaleGeneration = errors.New("checkpoint from a stale generation")
	ErrNotSyncing      = errors.New("sync continuation without a sync in progress")
	ErrNoBase          = errors.New("XOR delta without a base page")
	ErrIncompleteSync  = errors.New("full sync did not cover every page")
	ErrMemHash         = errors.New("memory hash mismatch after apply")
	ErrMachineState    = errors.New("machine state rejected")

	// Encoding side.
	ErrEncoderState = errors.New("encoder used out of order")
	ErrTooLarge     = errors.New("checkpoint too large")
)

// UnknownSectionError reports a section id this version does not know.
// It matches ErrUnknownSection with errors.Is.
type UnknownSectionError struct {
	ID     SectionID
	Offset int // byte offset of the section header in the checkpoint
}

func (e *UnknownSectionError) Error() string {
	return fmt.Sprintf("unknown section id %d at offset %d", uint16(e.ID), e.Offset)
}

// Is makes errors.Is(err, ErrUnknownSection) true.
func (e *UnknownSectionError) Is(target error) bool { return target == ErrUnknownSection }

// OrderError reports a checkpoint that does not follow the backup's
// committed state: what the backup holds, and what arrived.
// It matches ErrEpochOrder or ErrStaleGeneration with errors.Is.
type OrderError struct {
	Reason string // which rule was broken
	// Have is the backup's committed (or in-progress sync) position;
	// HaveValid is false when the backup holds no state yet.
	HaveGeneration, HaveEpoch uint64
	HaveValid                 bool
	Got                       Header
	stale                     bool
}

func (e *OrderError) Error() string {
	have := "nothing committed"
	if e.HaveValid {
		have = fmt.Sprintf("gen=%d epoch=%d", e.HaveGeneration, e.HaveEpoch)
	}
	return fmt.Sprintf("%s: backup has %s, got %v", e.Reason, have, e.Got)
}

// Is matches ErrStaleGeneration for a lower generation, ErrEpochOrder otherwise.
func (e *OrderError) Is(target error) bool {
	if e.stale {
		return target == ErrStaleGeneration
	}
	return target == ErrEpochOrder
}
