package vmm

import (
	"encoding/binary"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestTapRoundTrip creates a tap in a fresh network namespace, gives it
// 10.9.0.1/24, sends the kernel an ARP request for that address from a
// guest MAC through SendFrame, and expects the kernel's ARP reply back
// through the tap's receive goroutine.
func TestTapRoundTrip(t *testing.T) {
	errc := make(chan error, 1)
	var tap *Tap
	go func() {
		// This thread enters the namespace and is never unlocked, so it
		// dies with the goroutine instead of returning to the pool.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		var err error
		if tap, err = OpenTap("fttap0"); err != nil {
			errc <- err
			return
		}
		errc <- configureTestIf(tap.Name(), [4]byte{10, 9, 0, 1})
	}()
	if err := <-errc; err != nil {
		if tap != nil {
			tap.Close()
		}
		t.Skipf("needs root and a new network namespace (unshare CLONE_NEWNET, /dev/net/tun): %v", err)
	}
	defer tap.Close()
	p := newPortRecorder()
	if err := tap.Start(p); err != nil {
		t.Fatal(err)
	}
	mac, ip := [6]byte{2, 0, 0, 0, 0, 0x42}, [4]byte{10, 9, 0, 2}
	if err := tap.SendFrame(arpFrame(arpOpRequest, mac, ip, broadcastMAC, [6]byte{}, [4]byte{10, 9, 0, 1})); err != nil {
		t.Fatal(err)
	}
	for {
		f := p.next(t) // the kernel may also send IPv6 solicitations
		if len(f) < ethHdrLen+arpLen || etherType(f) != etherTypeARP {
			continue
		}
		a := f[ethHdrLen:]
		if binary.BigEndian.Uint16(a[6:]) != arpOpReply {
			continue
		}
		if [6]byte(f[:6]) != mac || [4]byte(a[14:18]) != [4]byte{10, 9, 0, 1} || [4]byte(a[24:28]) != ip {
			t.Fatalf("unexpected ARP reply % x", f)
		}
		return
	}
}

// configureTestIf sets ip/24 on interface name and brings it up, in the
// calling thread's network namespace.
func configureTestIf(name string, ip [4]byte) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(ip[:]); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCSIFADDR, ifr); err != nil {
		return err
	}
	if err := ifr.SetInet4Addr([]byte{255, 255, 255, 0}); err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCSIFNETMASK, ifr); err != nil {
		return err
	}
	ifr, _ = unix.NewIfreq(name)
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr)
}
