package vmm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

func fdatasync(f *os.File) error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s: %w", f.Name(), err)
	}
	return nil
}
