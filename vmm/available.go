package vmm

import "golang.org/x/sys/unix"

// Available says whether /dev/kvm can be opened here: whether New can
// build a machine at all.
func Available() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
