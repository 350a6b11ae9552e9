package witness

import (
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const msec = time.Millisecond

// lockOFD takes (or drops) an OFD write lock on the lease block of f, as
// another candidate would.
func lockOFD(t *testing.T, f *os.File, lock bool) {
	t.Helper()
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: io.SeekStart, Start: 0, Len: leaseBlockSize}
	if lock {
		lk.Type = unix.F_WRLCK
	}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatalf("OFD lock: %v", err)
	}
}
