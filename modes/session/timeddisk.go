package session

import (
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/vmm"
)

// A backup whose disk image hangs (a dead disk, a lost NFS server) cannot
// take over, yet it may look alive to its primary. What can hang for good
// is an operation on the image: the backup's other work is CPU on memory,
// which ends, if late on a large guest. So a backup times its image's
// operations (TimedDisk, OpClock) and gives up, or falls silent, once one
// has taken longer than the failure timeout.

// OpClock tells how long the operation on a disk image in progress has
// taken. One goroutine's operations at a time: another's would overwrite
// the start of the first.
type OpClock struct {
	since atomic.Int64 // UnixNano the operation began; 0 between operations
}

// begin notes that an operation begins; end that it ended.
func (c *OpClock) begin() { c.since.Store(time.Now().UnixNano()) }
func (c *OpClock) end()   { c.since.Store(0) }

// Busy is how long the operation in progress has taken, 0 if none. Safe
// from any goroutine.
func (c *OpClock) Busy() time.Duration {
	began := c.since.Load()
	if began == 0 {
		return 0
	}
	return time.Since(time.Unix(0, began))
}

// TimedDisk is a disk image whose operations Clock times.
type TimedDisk struct {
	vmm.Disk
	Clock *OpClock
}

// ReadAt implements vmm.Disk.
func (d TimedDisk) ReadAt(p []byte, off int64) (int, error) {
	d.Clock.begin()
	defer d.Clock.end()
	return d.Disk.ReadAt(p, off)
}

// WriteAt implements vmm.Disk.
func (d TimedDisk) WriteAt(p []byte, off int64) (int, error) {
	d.Clock.begin()
	defer d.Clock.end()
	return d.Disk.WriteAt(p, off)
}

// Flush implements vmm.Disk.
func (d TimedDisk) Flush() error {
	d.Clock.begin()
	defer d.Clock.end()
	return d.Disk.Flush()
}
