package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Component is implemented by every part of the machine that has state: each
// vCPU, the VM's interrupt controllers and clock, and every device. There is
// no default implementation, so a component cannot silently save nothing.
//
// A component's state is a plain-data struct (no pointers, channels, fds or
// goroutines) encoded little-endian with encoding/binary.
type Component interface {
	// ID names the component in a snapshot ("vcpu/0", "serial/com1"). It is
	// stable across versions of ftckpt.
	ID() string
	// StateVersion is the version of the encoding SaveState produces.
	StateVersion() uint32
	// SaveState returns the component's encoded state.
	// Precondition: the machine is paused (or not yet started).
	SaveState() ([]byte, error)
	// RestoreState loads state that SaveState produced with the given
	// version. It validates everything before changing anything, and refuses
	// versions it does not know.
	// Precondition: the machine is paused (or not yet started).
	RestoreState(version uint32, data []byte) error
}

// Errors a snapshot or state decoder returns; each is wrapped with what was
// being decoded.
var (
	ErrBadMagic  = errors.New("not an ftckpt snapshot (wrong magic)")
	ErrVersion   = errors.New("unsupported format version")
	ErrTruncated = errors.New("truncated")
	ErrChecksum  = errors.New("checksum mismatch (corrupt)")
	ErrMismatch  = errors.New("does not match this machine")
)

// encodePlain encodes a fixed-size plain-data struct, as binary.Write does,
// from its memory image where it has no padding (see plainImage): the
// reflection of binary.Write costs microseconds per device in the
// checkpoint pause.
func encodePlain(v any) ([]byte, error) {
	if b, ok := plainImage(v); ok {
		return b, nil
	}
	var buf bytes.Buffer
	buf.Grow(binary.Size(v))
	if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodePlain decodes data into the fixed-size plain-data struct v; data must
// be exactly its size.
func decodePlain(data []byte, v any) error {
	if want := binary.Size(v); len(data) != want {
		return fmt.Errorf("%w: %d bytes of state, want %d", ErrTruncated, len(data), want)
	}
	return binary.Read(bytes.NewReader(data), binary.LittleEndian, v)
}

// checkVersion refuses a state version a component does not know.
func checkVersion(id string, got, want uint32) error {
	if got != want {
		return fmt.Errorf("%s: state version %d: %w (this build knows %d)", id, got, ErrVersion, want)
	}
	return nil
}
