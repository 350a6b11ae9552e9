package witness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// DiskLease is an Arbiter whose state is one lease block (see lease_block.go)
// in a file on storage every candidate can reach: a lease file beside the
// shared disk image, or a block inside the image itself.
//
// Each operation is a test-and-set made atomic by a record lock on the
// block: open, lock (blocking), read, verify the checksum, decide, write the
// whole block, fsync, unlock, close. A block that fails verification is
// reported (ErrCorrupt) and never overwritten.
//
// Locks: open file description (OFD) locks, F_OFD_SETLKW. They belong to the
// open file, not to the process, so two goroutines of one process, each with
// its own open, exclude each other exactly as two processes do, and closing
// some other descriptor of the file does not drop them (both are traps of
// classic POSIX locks). Linux sends OFD locks to the NFS lock manager like
// POSIX record locks, so this works on NFS mounted with locking. On a kernel
// without OFD locks, DiskLease falls back to F_SETLKW and serialises its own
// goroutines with a process-wide mutex.
//
// Every operation opens the file anew, so a DiskLease holds no descriptor
// and is safe for concurrent use.
type DiskLease struct {
	path   string
	offset int64
	image  bool // block inside an existing image: never create or grow the file
	posix  bool // classic POSIX locks with posixMu (no OFD locks here)
}

// posixMu serialises the process's lease operations when classic POSIX
// locks are used: they would not exclude two goroutines of one process.
var posixMu sync.Mutex

// OpenLeaseFile returns a DiskLease on a lease file at path holding one
// block at offset 0. The file is created (empty: no holder) if missing; an
// existing file must be a lease file (0 or 512 bytes).
func OpenLeaseFile(path string) (*DiskLease, error) {
	return openLease(path, 0, false)
}

// OpenLeaseBlock returns a DiskLease on the block at offset (a multiple of
// 512) inside the existing disk image at path. A block of zeros means no
// holder. The caller must make sure the guest never writes that block.
func OpenLeaseBlock(path string, offset int64) (*DiskLease, error) {
	if offset < 0 || offset%leaseBlockSize != 0 {
		return nil, fmt.Errorf("lease block offset %d in %s: must be a non-negative multiple of %d", offset, path, leaseBlockSize)
	}
	return openLease(path, offset, true)
}

func openLease(path string, offset int64, image bool) (*DiskLease, error) {
	l := &DiskLease{path: path, offset: offset, image: image}
	f, err := l.open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := l.size(f); err != nil {
		return nil, err
	}
	probe := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: offset, Len: leaseBlockSize}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &probe); errors.Is(err, unix.EINVAL) {
		l.posix = true
	} else if err != nil {
		return nil, fmt.Errorf("probing record locks on %s: %w", path, err)
	}
	return l, nil
}

// String names the lease for logs, in Open's spec syntax.
func (l *DiskLease) String() string {
	if l.image {
		return fmt.Sprintf("disk:%s#%d", l.path, l.offset)
	}
	return "disk:" + l.path
}

// Acquire implements Arbiter.
func (l *DiskLease) Acquire(ctx context.Context, g uint64, owner string) (Claim, error) {
	if err := validateRequest(g, owner); err != nil {
		return Claim{}, err
	}
	var won bool
	c, err := l.do(ctx, true, func(cur Claim) Claim {
		var next Claim
		next, won = decide(cur, g, owner)
		return next
	})
	if err != nil {
		return Claim{}, fmt.Errorf("acquiring generation %d for %q at %s: %w", g, owner, l, err)
	}
	return outcome(c, won, g, owner)
}

// Current implements Arbiter.
func (l *DiskLease) Current(ctx context.Context) (Claim, error) {
	c, err := l.do(ctx, false, nil)
	if err != nil {
		return Claim{}, fmt.Errorf("reading holder at %s: %w", l, err)
	}
	return c, nil
}

// Close implements Arbiter; a DiskLease keeps no descriptor open.
func (l *DiskLease) Close() error { return nil }

// do runs one locked read (and, if write, a test-and-set with update) and
// returns the holder afterwards. The file work runs in its own goroutine so
// that ctx bounds the wait even when a lock or an NFS server hangs; if ctx
// ends first the result is unknown and the error wraps ErrUnreachable.
func (l *DiskLease) do(ctx context.Context, write bool, update func(Claim) Claim) (Claim, error) {
	if err := ctx.Err(); err != nil {
		return Claim{}, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	type result struct {
		c   Claim
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.locked(write, update)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		return Claim{}, fmt.Errorf("%w: lease operation still pending: %w", ErrUnreachable, ctx.Err())
	}
}

// locked is one lease operation under the record lock on the block.
// I/O failures wrap ErrUnreachable; verification failures wrap ErrCorrupt.
func (l *DiskLease) locked(write bool, update func(Claim) Claim) (Claim, error) {
	if l.posix {
		posixMu.Lock()
		defer posixMu.Unlock()
	}
	f, err := l.open()
	if err != nil {
		return Claim{}, err
	}
	defer f.Close()

	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: l.offset, Len: leaseBlockSize}
	if write {
		lk.Type = unix.F_WRLCK
	}
	setlk := unix.F_OFD_SETLKW
	if l.posix {
		setlk = unix.F_SETLKW
	}
	if err := retryEINTR(func() error { return unix.FcntlFlock(f.Fd(), setlk, &lk) }); err != nil {
		return Claim{}, fmt.Errorf("%w: locking the lease block: %w", ErrUnreachable, err)
	}
	defer func() {
		lk.Type = unix.F_UNLCK
		_ = unix.FcntlFlock(f.Fd(), setlk, &lk) // close releases it too
	}()

	cur, err := l.read(f)
	if err != nil {
		return Claim{}, err
	}
	if !write {
		return cur, nil
	}
	next := update(cur)
	if next == cur {
		return cur, nil
	}
	if _, err := f.WriteAt(encodeLease(next), l.offset); err != nil {
		return Claim{}, fmt.Errorf("%w: writing the lease block: %w", ErrUnreachable, err)
	}
	if err := f.Sync(); err != nil {
		return Claim{}, fmt.Errorf("%w: syncing the lease block: %w", ErrUnreachable, err)
	}
	return next, nil
}

// read returns the claim in the block. Precondition: the block is locked.
func (l *DiskLease) read(f *os.File) (Claim, error) {
	size, err := l.size(f)
	if err != nil {
		return Claim{}, err
	}
	if !l.image && size == 0 {
		return Claim{}, nil
	}
	b := make([]byte, leaseBlockSize)
	if _, err := f.ReadAt(b, l.offset); err != nil {
		return Claim{}, fmt.Errorf("%w: reading the lease block: %w", ErrUnreachable, err)
	}
	return decodeLease(b)
}

// size checks the file can hold the block and returns its size.
func (l *DiskLease) size(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("%w: stat %s: %w", ErrUnreachable, l.path, err)
	}
	size := st.Size()
	switch {
	case l.image && size < l.offset+leaseBlockSize:
		return 0, fmt.Errorf("%w: image %s is %d bytes, too small for a lease block at offset %d", ErrCorrupt, l.path, size, l.offset)
	case !l.image && size != 0 && size != leaseBlockSize:
		return 0, fmt.Errorf("%w: lease file %s is %d bytes, want %d (truncated or not a lease file)", ErrCorrupt, l.path, size, leaseBlockSize)
	}
	return size, nil
}

func (l *DiskLease) open() (*os.File, error) {
	flags := os.O_RDWR
	if !l.image {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(l.path, flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%w: opening %s: %w", ErrUnreachable, l.path, err)
	}
	return f, nil
}

func retryEINTR(op func() error) error {
	for {
		if err := op(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
