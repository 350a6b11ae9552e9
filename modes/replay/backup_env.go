package replay

import (
	"fmt"

	"github.com/ftckpt/ftckpt/outbuf"
)

// backupEnv is the replaying Env: it answers from the log and suppresses
// outputs, until the backup goes live; then the live primary answers.
type backupEnv struct{ b *Backup }

func (e backupEnv) Now() uint64 {
	b := e.b
	if t, ok := b.expect(EntryTime); ok {
		b.lastTime = max(b.lastTime, t.Time)
		return t.Time
	}
	if b.live != nil {
		return primaryEnv{b.live}.Now()
	}
	return b.lastTime // divergence noted; the value does not matter
}

func (e backupEnv) ReadDisk(p []byte, off int64) error {
	b := e.b
	for len(p) > 0 {
		r, ok := b.expect(EntryDiskRead)
		switch {
		case b.live != nil:
			return primaryEnv{b.live}.ReadDisk(p, off)
		case !ok:
			return nil // divergence noted
		case r.Off != off || len(r.Bytes) > len(p) || len(r.Bytes) < min(len(p), MaxDiskRead):
			b.envErr = &divergence{b.lsn, fmt.Sprintf("disk read of %d bytes at %d, the log has %d at %d", len(p), off, len(r.Bytes), r.Off)}
			return nil
		}
		n := copy(p, r.Bytes)
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (e backupEnv) WriteDisk(p []byte, off int64) error {
	return e.suppress(outbuf.DiskWrite(append([]byte(nil), p...), off))
}

func (e backupEnv) FlushDisk() error {
	if b := e.b; b.live != nil {
		return b.live.flushDisk()
	}
	return nil
}

func (e backupEnv) SendFrame(frame []byte) error {
	return e.suppress(outbuf.NetFrame(append([]byte(nil), frame...)))
}

// suppress keeps an output instead of emitting it, until the primary says
// it released it; a live backup emits it.
func (e backupEnv) suppress(o outbuf.Output) error {
	b := e.b
	sum, ok := b.expect(EntryOutput)
	switch {
	case b.live != nil:
		return b.live.hold(o)
	case !ok:
		return nil // divergence noted
	case sum.Out != SumOutput(o):
		b.envErr = &divergence{b.lsn, fmt.Sprintf("the guest emitted %v, the primary's %v", Entry{Type: EntryOutput, Out: SumOutput(o)}, sum)}
		return nil
	}
	b.window = append(b.window, suppressed{pos: b.lsn, out: o})
	if o.Kind == outbuf.KindDiskWrite && b.image != nil {
		if _, err := b.replayerImage.WriteAt(o.Data, o.Off); err != nil {
			b.envErr = fmt.Errorf("%w: writing the guest's write of %d bytes at %d (LSN %d): %w", ErrImage, len(o.Data), o.Off, b.lsn, err)
		}
	}
	return nil
}

func (e backupEnv) Console(p []byte) {
	if b := e.b; b.live != nil {
		primaryEnv{b.live}.Console(p)
	}
}
