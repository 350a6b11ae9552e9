package outbuf

import (
	"errors"
	"fmt"
	"io"
)

// chunkShift sets the overlay's index granularity: 4 KiB, a page and eight
// sectors. A read looks only at the writes indexed in the chunks it touches.
const chunkShift = 12

// overlay indexes held disk writes by the chunks they touch. Each chunk's
// list is in emission order, and since writes are released in emission
// order, a released write is always at the front of each of its lists.
// Protected by Buffer.mu.
type overlay struct {
	chunks map[int64][]*entry
	// end is at least the end of every held write. It is reset only when
	// the overlay empties, so it may overstate, but only by the end of a
	// write already released, which the Disk (growing on WriteAt) reaches.
	end int64
}

func newOverlay() overlay { return overlay{chunks: make(map[int64][]*entry)} }

// span returns the first and last chunk of [off, off+n), n > 0.
func span(off int64, n int) (first, last int64) {
	return off >> chunkShift, (off + int64(n) - 1) >> chunkShift
}

func (o *overlay) add(e *entry) {
	first, last := span(e.out.Off, len(e.out.Data))
	for c := first; c <= last; c++ {
		o.chunks[c] = append(o.chunks[c], e)
	}
	o.end = max(o.end, e.out.Off+int64(len(e.out.Data)))
}

// remove takes out e, the oldest held write; it panics if e is not the oldest
// in each of its chunks, which would mean releases went out of order.
func (o *overlay) remove(e *entry) {
	first, last := span(e.out.Off, len(e.out.Data))
	for c := first; c <= last; c++ {
		l := o.chunks[c]
		if len(l) == 0 || l[0] != e {
			panic(fmt.Sprintf("outbuf: overlay chunk %d: released write at position %d is not its oldest", c, e.pos))
		}
		if len(l) == 1 {
			delete(o.chunks, c)
			continue
		}
		l[0] = nil
		o.chunks[c] = l[1:]
	}
	if len(o.chunks) == 0 {
		o.end = 0
	}
}

func (o *overlay) clear() {
	clear(o.chunks)
	o.end = 0
}

// apply copies onto p, which holds the disk's bytes at off, every held write
// overlapping it, oldest first.
func (o *overlay) apply(p []byte, off int64) {
	if len(o.chunks) == 0 || len(p) == 0 {
		return
	}
	first, last := span(off, len(p))
	for c := first; c <= last; c++ {
		l := o.chunks[c]
		if len(l) == 0 {
			continue
		}
		// Within this chunk only this chunk's writes can land.
		lo := max(off, c<<chunkShift)
		hi := min(off+int64(len(p)), (c+1)<<chunkShift)
		for _, e := range l {
			wlo := max(lo, e.out.Off)
			whi := min(hi, e.out.Off+int64(len(e.out.Data)))
			if wlo >= whi {
				continue
			}
			copy(p[wlo-off:whi-off], e.out.Data[wlo-e.out.Off:])
		}
	}
}

// ReadAt reads the guest's view of the disk: the Disk's bytes with the held
// (unreleased) writes laid over them, so the guest reads back what it wrote.
// A held write past the end of the Disk extends it, as it will once
// released: bytes between the Disk's end and such a write read as zero, and
// io.EOF (with a short count) is returned only where p reaches past the end
// of both the Disk and every held write. The Disk must grow on a WriteAt past
// its end, as a file does. Every guest disk read must come here.
func (b *Buffer) ReadAt(p []byte, off int64) (int, error) {
	if b.env.Disk == nil {
		return 0, fmt.Errorf("outbuf: read %d bytes at offset %d: %w", len(p), off, ErrNoSink)
	}
	if off < 0 {
		return 0, fmt.Errorf("outbuf: read %d bytes at negative offset %d", len(p), off)
	}
	b.diskMu.RLock()
	defer b.diskMu.RUnlock()
	n, err := b.env.Disk.ReadAt(p, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, fmt.Errorf("outbuf: read %d bytes at offset %d: %w", len(p), off, err)
	}
	clear(p[n:])
	b.mu.Lock()
	b.overlay.apply(p, off)
	end := b.overlay.end
	b.mu.Unlock()
	if n < len(p) && end-off > int64(n) {
		n = int(min(end-off, int64(len(p))))
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
