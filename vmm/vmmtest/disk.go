package vmmtest

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// MemDisk is the in-memory twin of a disk image behind a host's page cache,
// with vmm.Disk's methods (ReadAt, WriteAt, Flush, Size). A write lands in
// the cache at once, and every read sees it; Flush makes what was written
// durable; Crash loses what was not flushed, as a host that died does. The
// durable image (Durable) is what another host reading the shared disk
// after the crash finds.
//
// Faults are injected through it: Refuse makes writes and flushes fail
// with the error a held device gives (vmm.ErrOutputFull: MemDisk does not
// import vmm, whose tests use it); FailFlush makes Flush fail as Linux's
// fdatasync does after a writeback error — the dirty pages it could not
// write are dropped as if clean, so a later Flush that works does not
// write them.
//
// The hooks are set before the disk is used and run outside its lock. Safe
// for concurrent use.
type MemDisk struct {
	// OnWrite, if set, runs before every write; an error refuses the write
	// (nothing is applied) and is WriteAt's.
	OnWrite func(p []byte, off int64) error
	// AfterWrite, if set, runs after every write that was applied.
	AfterWrite func(p []byte, off int64)
	// AfterRead, if set, runs once a read has copied its bytes, before it
	// returns.
	AfterRead func()

	mu       sync.Mutex // protects what follows
	data     []byte     // what reads see: the durable image, the cache over it
	durable  []byte
	dirty    []bool // bytes written since the last Flush
	grow     bool
	flushes  int
	refuse   error
	flushErr error // returned by the next Flush (every one, if flushAll)
	flushAll bool
}

// NewMemDisk returns a zeroed disk of size bytes; a write past its end
// fails.
func NewMemDisk(size int64) *MemDisk {
	return &MemDisk{data: make([]byte, size), durable: make([]byte, size), dirty: make([]bool, size)}
}

// NewGrowingMemDisk returns an empty disk that grows on writes past its
// end, as a file does.
func NewGrowingMemDisk() *MemDisk { return &MemDisk{grow: true} }

// ReadAt reads what the guest would: the last write of every byte, flushed
// or not. A read past the end is short, with io.EOF.
func (d *MemDisk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.read(p, off)
	if d.AfterRead != nil {
		d.AfterRead()
	}
	return n, err
}

func (d *MemDisk) read(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("read at negative offset %d", off)
	}
	if off >= int64(len(d.data)) {
		return 0, io.EOF
	}
	n := copy(p, d.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off into the cache (durable at the next Flush).
func (d *MemDisk) WriteAt(p []byte, off int64) (int, error) {
	if d.OnWrite != nil {
		if err := d.OnWrite(p, off); err != nil {
			return 0, err
		}
	}
	if n, err := d.write(p, off); err != nil {
		return n, err
	}
	if d.AfterWrite != nil {
		d.AfterWrite(p, off)
	}
	return len(p), nil
}

func (d *MemDisk) write(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refuse != nil {
		return 0, d.refuse
	}
	end := off + int64(len(p))
	switch {
	case off < 0:
		return 0, fmt.Errorf("write at negative offset %d", off)
	case end > int64(len(d.data)) && d.grow:
		d.resizeLocked(end)
	case end > int64(len(d.data)):
		return 0, fmt.Errorf("write of %d bytes at %d past the disk's %d", len(p), off, len(d.data))
	}
	copy(d.data[off:], p)
	for i := off; i < end; i++ {
		d.dirty[i] = true
	}
	return len(p), nil
}

func (d *MemDisk) resizeLocked(size int64) {
	grow := func(b []byte) []byte { return append(b, make([]byte, size-int64(len(b)))...) }
	d.data, d.durable = grow(d.data), grow(d.durable)
	d.dirty = append(d.dirty, make([]bool, size-int64(len(d.dirty)))...)
}

// Flush makes every write so far durable, or fails as FailFlush and Refuse
// say.
func (d *MemDisk) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.refuse != nil {
		return d.refuse
	}
	if err := d.flushErr; err != nil {
		if !d.flushAll {
			d.flushErr = nil
		}
		clear(d.dirty) // fdatasync after a writeback error: the pages count as clean
		return err
	}
	for i, dirty := range d.dirty {
		if dirty {
			d.durable[i] = d.data[i]
		}
	}
	clear(d.dirty)
	d.flushes++
	return nil
}

// Size is the disk's size in bytes.
func (d *MemDisk) Size() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return int64(len(d.data))
}

// Crash loses the cache: the disk holds only what was flushed.
func (d *MemDisk) Crash() {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.data, d.durable)
	clear(d.dirty)
}

// Bytes returns a copy of what reads see.
func (d *MemDisk) Bytes() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.data)
}

// Durable returns a copy of the durable image: what survives a Crash.
func (d *MemDisk) Durable() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.durable)
}

// SetImage replaces the disk's contents, durable, with a copy of image (its
// size too).
func (d *MemDisk) SetImage(image []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.data, d.durable = bytes.Clone(image), bytes.Clone(image)
	d.dirty = make([]bool, len(image))
}

// Flushes is how many flushes succeeded.
func (d *MemDisk) Flushes() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.flushes
}

// Refuse makes every write and flush fail with err from now on (nil: they
// work again), as a device that cannot take them now refuses them.
func (d *MemDisk) Refuse(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.refuse = err
}

// FailFlush makes the next Flush fail with err, or with every, every Flush
// until FailFlush(nil, false). A failed Flush drops the writes it could not
// make durable (see MemDisk).
func (d *MemDisk) FailFlush(err error, every bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushErr, d.flushAll = err, every
}
