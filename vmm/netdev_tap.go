package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Tap is a network backend on a Linux tap device (IFF_TAP|IFF_NO_PI): whole
// Ethernet frames in and out, for real deployments and the multi-host tests
// in network namespaces.
type Tap struct {
	f       *os.File
	name    string
	started atomic.Bool
	wg      sync.WaitGroup
}

// OpenTap creates or attaches to the tap interface name ("" lets the kernel
// pick one, see Name). It needs CAP_NET_ADMIN.
func OpenTap(name string) (*Tap, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %q: %w", name, err)
	}
	// Non-blocking, so the runtime poller owns reads and Close wakes them.
	return &Tap{f: os.NewFile(uintptr(fd), "/dev/net/tun"), name: ifr.Name()}, nil
}

// Name is the interface's name.
func (t *Tap) Name() string { return t.name }

// Start implements NetBackend: a goroutine reads frames into port.
func (t *Tap) Start(port RxPort) error {
	if t.started.Swap(true) {
		return errors.New("tap: already started")
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := t.f.Read(buf)
			if err != nil {
				if !errors.Is(err, os.ErrClosed) {
					slog.Warn("tap: read failed; stopping", "tap", t.name, "err", err)
				}
				return
			}
			if port.Receive(buf[:n]) {
				port.Poll()
			}
		}
	}()
	return nil
}

// SendFrame implements FrameSink. It never waits: a full tap queue is
// ErrOutputFull.
func (t *Tap) SendFrame(frame []byte) error {
	rc, err := t.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), frame)
		return true // never park in the poller: the caller is a vCPU
	}); err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	if errors.Is(werr, unix.EAGAIN) {
		return ErrOutputFull
	}
	if werr != nil {
		return fmt.Errorf("tap %s: writing a frame: %w", t.name, werr)
	}
	return nil
}

// Close implements NetBackend.
func (t *Tap) Close() error {
	err := t.f.Close()
	t.wg.Wait()
	return err
}
