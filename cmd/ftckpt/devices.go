package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/spf13/cobra"
)

// deviceFlags choose the guest's network and disk backends.
type deviceFlags struct {
	net      string
	disk     string
	diskSize string
}

func (d *deviceFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&d.net, "net", "auto", `network: udp:ADDR (a UDP front, no root needed), tap:NAME, none; auto: udp:127.0.0.1:7777 for the kv guest, else none`)
	cmd.Flags().StringVar(&d.disk, "disk", "auto", `disk image (the shared disk), created if missing; none; auto: ftckpt-disk.img for the disk guest, else none`)
	cmd.Flags().StringVar(&d.diskSize, "disk-size", "64M", "size of a disk image that --disk creates")
}

// validate checks the flags' syntax before anything is built.
func (d *deviceFlags) validate() error {
	if kind, _, _ := strings.Cut(d.net, ":"); d.net != "auto" && d.net != "none" && kind != "udp" && kind != "tap" {
		return fmt.Errorf("--net %q: want udp:ADDR, tap:NAME, none or auto", d.net)
	}
	if _, err := parseSize(d.diskSize); err != nil {
		return fmt.Errorf("--disk-size: %w", err)
	}
	return nil
}

// attached is what attach made: the guest's boot devices and how to
// release the host side.
type attached struct {
	boot    []vmm.BootDevice
	net     vmm.NetBackend
	disk    *vmm.FileDisk
	netDev  *vmm.VirtioNet
	blkDev  *vmm.VirtioBlk
	closers []func() error
}

func (a *attached) Close() error {
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// resolve turns "auto" into what it means for guest.
func (d *deviceFlags) resolve(guest string) (netSpec, diskSpec string) {
	netSpec, diskSpec = d.net, d.disk
	if netSpec == "auto" {
		netSpec = "none"
		if guest == "kv" {
			netSpec = "udp:127.0.0.1:7777"
		}
	}
	if diskSpec == "auto" {
		diskSpec = "none"
		if guest == "disk" {
			diskSpec = "ftckpt-disk.img"
		}
	}
	return netSpec, diskSpec
}

// openNet opens the network backend spec names (not "none").
func openNet(spec string) (vmm.NetBackend, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	var b vmm.NetBackend
	var err error
	switch kind {
	case "udp":
		b, err = vmm.NewUDPFront(vmm.UDPFrontConfig{Listen: arg})
	case "tap":
		b, err = vmm.OpenTap(arg)
	default:
		return nil, fmt.Errorf("--net %q: want udp:ADDR, tap:NAME or none", spec)
	}
	if err != nil {
		return nil, fmt.Errorf("--net %s: %w", spec, err)
	}
	return b, nil
}

// openDisk opens the disk image, creating it at --disk-size if missing
// (atomically: both hosts may start at once).
func (d *deviceFlags) openDisk(path string) (*vmm.FileDisk, error) {
	size, err := parseSize(d.diskSize)
	if err != nil {
		return nil, fmt.Errorf("--disk-size: %w", err)
	}
	disk, err := vmm.OpenOrCreateFileDisk(path, size)
	if err != nil {
		return nil, fmt.Errorf("--disk %s: %w", path, err)
	}
	return disk, nil
}

// attach opens the backends the flags name for guest and attaches their
// devices to m. wrapNet and wrapDisk, if not nil, put the output buffer
// between device and backend. The network backend is not started: call
// startNet once the machine is ready to receive.
func (d *deviceFlags) attach(m *vmm.Machine, guest string, wrapNet func(vmm.FrameSink) vmm.FrameSink, wrapDisk func(vmm.Disk) vmm.Disk) (*attached, error) {
	return d.attachDevices(m, guest, nil, wrapNet, wrapDisk)
}

// attachDeferred attaches the same devices as attach for a backup, whose
// network backend opens only when it goes live (the primary holds it until
// then): the device sends to netOut, which drops until goLive points it at
// the backend. The shared disk is opened now; its device is not used until
// the guest runs.
func (d *deviceFlags) attachDeferred(m *vmm.Machine, guest string, netOut *netTarget) (*attached, error) {
	return d.attachDevices(m, guest, netOut, nil, nil)
}

func (d *deviceFlags) attachDevices(m *vmm.Machine, guest string, deferredNet *netTarget, wrapNet func(vmm.FrameSink) vmm.FrameSink, wrapDisk func(vmm.Disk) vmm.Disk) (*attached, error) {
	a := &attached{}
	ok := false
	defer func() {
		if !ok {
			a.Close()
		}
	}()
	netSpec, diskSpec := d.resolve(guest)
	if netSpec != "none" {
		var sink vmm.FrameSink = deferredNet
		if deferredNet == nil {
			var err error
			if a.net, err = openNet(netSpec); err != nil {
				return nil, err
			}
			a.closers = append(a.closers, a.net.Close)
			sink = a.net
			if wrapNet != nil {
				sink = wrapNet(sink)
			}
		}
		bd, dev, err := m.AttachVirtioNet(vmm.NetConfig{Sink: sink})
		if err != nil {
			return nil, err
		}
		a.boot, a.netDev = append(a.boot, bd), dev
	}
	if diskSpec != "none" {
		var err error
		if a.disk, err = d.openDisk(diskSpec); err != nil {
			return nil, err
		}
		a.closers = append(a.closers, a.disk.Close)
		var disk vmm.Disk = a.disk
		if wrapDisk != nil {
			disk = wrapDisk(disk)
		}
		bd, dev, err := m.AttachVirtioBlk(vmm.BlkConfig{Disk: disk})
		if err != nil {
			return nil, err
		}
		a.boot, a.blkDev = append(a.boot, bd), dev
	}
	ok = true
	return a, nil
}

// goLive opens a backup's network backend and starts it. On a tap it first
// announces the guest's MAC (a gratuitous ARP, as QEMU does after a
// migration) so the network finds the guest on this host.
// The dead primary's host may still hold the address a moment (a process
// killed with -9 closes its sockets as it is torn down), so a busy address
// is tried again for a while.
func (a *attached) goLive(ctx context.Context, d deviceFlags, guest string, netOut *netTarget) error {
	netSpec, _ := d.resolve(guest)
	if netSpec == "none" {
		return nil
	}
	b, err := whileBusy(ctx, func() (vmm.NetBackend, error) { return openNet(netSpec) })
	if err != nil {
		return err
	}
	a.net = b
	a.closers = append(a.closers, b.Close)
	netOut.set(b)
	if strings.HasPrefix(netSpec, "tap:") {
		if err := b.SendFrame(vmm.GratuitousARP(vmm.DefaultGuestMAC, guestIP)); err != nil {
			return fmt.Errorf("announcing the guest after failover: %w", err)
		}
	}
	return a.startNet()
}

// guestIP is the bundled guests' address (the kv guest's default).
var guestIP = [4]byte{10, 0, 2, 15}

// startNet starts delivering received frames to the guest.
func (a *attached) startNet() error {
	if a.net == nil {
		return nil
	}
	return a.net.Start(a.netDev)
}
