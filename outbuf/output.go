package outbuf

import (
	"errors"
	"fmt"
	"math"
)

// Kind says what an output is and which sink receives it. The zero Kind is
// invalid.
type Kind uint8

const (
	// KindInvalid is the zero Kind; an output of this kind is refused.
	KindInvalid Kind = iota
	// KindNetFrame is a network frame, released to the [NetSink].
	KindNetFrame
	// KindDiskWrite is a write of Data at Off, released to the [Disk].
	KindDiskWrite
)

func (k Kind) String() string {
	switch k {
	case KindNetFrame:
		return "net frame"
	case KindDiskWrite:
		return "disk write"
	default:
		return fmt.Sprintf("invalid kind %d", uint8(k))
	}
}

// Output is one thing the guest emitted. Build it with [NetFrame] or
// [DiskWrite].
type Output struct {
	Kind Kind
	// Data is the frame or the bytes written. Hold copies it.
	Data []byte
	// Off is the disk offset of a disk write; zero for a frame.
	Off int64
}

// NetFrame is an output that sends frame on the network.
func NetFrame(frame []byte) Output { return Output{Kind: KindNetFrame, Data: frame} }

// DiskWrite is an output that writes p to the disk at off.
func DiskWrite(p []byte, off int64) Output { return Output{Kind: KindDiskWrite, Data: p, Off: off} }

// errInvalidOutput is wrapped by every refusal of a malformed output.
var errInvalidOutput = errors.New("invalid output")

// validate checks the output's own fields; it knows nothing of the buffer.
func (o Output) validate() error {
	if len(o.Data) == 0 {
		return fmt.Errorf("%w: empty %s", errInvalidOutput, o.Kind)
	}
	switch o.Kind {
	case KindNetFrame:
		if o.Off != 0 {
			return fmt.Errorf("%w: net frame with offset %d", errInvalidOutput, o.Off)
		}
	case KindDiskWrite:
		if o.Off < 0 || o.Off > math.MaxInt64-int64(len(o.Data)) {
			return fmt.Errorf("%w: disk write of %d bytes at offset %d", errInvalidOutput, len(o.Data), o.Off)
		}
	default:
		return fmt.Errorf("%w: %s", errInvalidOutput, o.Kind)
	}
	return nil
}
