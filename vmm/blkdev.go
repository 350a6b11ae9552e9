package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Disk is the single hook every guest disk access goes through. The
// checkpoint and replay modes wrap the backend's disk to hold writes until
// the backup has acknowledged the state that produced them, overlaying held
// writes on reads.
//
// Methods are called with the device's lock held, from a vCPU thread or
// from Poll; they must not call back into the device. WriteAt and Flush may
// return ErrOutputFull ("full, try later"): the device then retries the
// whole request later. p is only valid during the call.
type Disk interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes every completed write durable.
	Flush() error
	// Size is the disk's size in bytes (a multiple of 512).
	Size() int64
}

// FileDisk is a Disk backed by a disk image file: the shared disk.
type FileDisk struct {
	f    *os.File
	size int64
}

// OpenFileDisk opens a disk image. Its size must be a non-zero multiple of
// 512 bytes; readOnly opens it read-only.
func OpenFileDisk(path string, readOnly bool) (*FileDisk, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("opening disk image: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("disk image %s: %w", path, err)
	}
	if fi.Size() == 0 || fi.Size()%sectorSize != 0 {
		f.Close()
		return nil, fmt.Errorf("disk image %s: %d bytes is not a non-zero multiple of %d", path, fi.Size(), sectorSize)
	}
	return &FileDisk{f: f, size: fi.Size()}, nil
}

// CreateFileDisk creates (or truncates) a zero-filled, sparse disk image of
// size bytes.
func CreateFileDisk(path string, size int64) (*FileDisk, error) {
	if size <= 0 || size%sectorSize != 0 {
		return nil, fmt.Errorf("disk image of %d bytes: not a positive multiple of %d", size, sectorSize)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating disk image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("sizing disk image %s: %w", path, err)
	}
	return &FileDisk{f: f, size: size}, nil
}

// OpenOrCreateFileDisk opens the disk image at path, or creates it with
// size bytes if it does not exist. Creation is atomic (a sized temporary
// file linked into place), so hosts that start at once on a shared
// directory agree on one image and none sees it half made.
func OpenOrCreateFileDisk(path string, size int64) (*FileDisk, error) {
	if _, err := os.Stat(path); err == nil {
		return OpenFileDisk(path, false)
	}
	if size <= 0 || size%sectorSize != 0 {
		return nil, fmt.Errorf("disk image of %d bytes: not a positive multiple of %d", size, sectorSize)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".new-*")
	if err != nil {
		return nil, fmt.Errorf("creating disk image: %w", err)
	}
	defer os.Remove(tmp.Name())
	err = tmp.Truncate(size)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("sizing disk image %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("creating disk image: %w", err)
	}
	return OpenFileDisk(path, false) // ours, or the one another host made first
}

// ReadAt implements Disk.
func (d *FileDisk) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt implements Disk.
func (d *FileDisk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

// Flush implements Disk with fdatasync.
func (d *FileDisk) Flush() error { return fdatasync(d.f) }

// Size implements Disk.
func (d *FileDisk) Size() int64 { return d.size }

// ErrDiskInUse is returned by Lock when another process holds the image.
var ErrDiskInUse = errors.New("disk image in use by another process")

// Lock takes an exclusive lock on the image (flock), waiting up to wait
// for a process that holds it to let go: an image only one process may
// use (a mirrored disk's) is then never written by two. The lock goes with
// Close, or with the process.
func (d *FileDisk) Lock(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(d.f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("locking disk image %s: %w", d.f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s (waited %v)", ErrDiskInUse, d.f.Name(), wait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close closes the image file.
func (d *FileDisk) Close() error { return d.f.Close() }
