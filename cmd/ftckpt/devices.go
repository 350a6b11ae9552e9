package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/spf13/cobra"
)

// deviceFlags choose the guest's network and disk backends.
type deviceFlags struct {
	net      string
	disk     string
	diskSize string
	diskMode string
}

func (d *deviceFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&d.net, "net", "auto", `network: udp:ADDR (a UDP front, no root needed), tap:NAME, none; auto: udp:127.0.0.1:7777 for the kv guest, else none`)
	cmd.Flags().StringVar(&d.disk, "disk", "auto", `disk image, created if missing; none; auto: ftckpt-disk.img for the disk guest (and the software machine's kv), else none`)
	cmd.Flags().StringVar(&d.diskSize, "disk-size", "64M", "size of a disk image that --disk creates")
}

// addMode adds --disk-mode, which only a protected run has.
func (d *deviceFlags) addMode(cmd *cobra.Command) {
	cmd.Flags().StringVar(&d.diskMode, "disk-mode", "auto", `shared: both hosts open the one image --disk names; mirrored: each host its own, kept equal by the checkpoints (or the log) and copied to a backup that joins; auto: mirrored with --role (hosts apart), shared on a local run. A local run's mirrored backups get --disk's image with ".mirror" added or removed`)
}

// resolveMode is --disk-mode, auto resolved: mirrored for a node given its
// --role (hosts apart), shared for a local run.
func (d *deviceFlags) resolveMode(role string) (node.DiskMode, error) {
	if d.diskMode == "auto" {
		if role != "" {
			return node.DiskMirrored, nil
		}
		return node.DiskShared, nil
	}
	return node.ParseDiskMode(d.diskMode)
}

// localBackupDisk are the flags that give a backup this node starts (a
// local run's, or a respawned one) the disk mode of o and, mirrored, an
// image of its own: o's with ".mirror" added, or removed, so that a pair's
// two images take turns.
func localBackupDisk(o node.Options) []string {
	args := []string{"--disk-mode", o.DiskMode.String()}
	if o.DiskMode == node.DiskMirrored && o.Disk != "" {
		img, ok := strings.CutSuffix(o.Disk, ".mirror")
		if !ok {
			img = o.Disk + ".mirror"
		}
		args = append(args, "--disk", img)
	}
	return args
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

// resolve turns "auto" into the guest's default devices on machine
// (node.DefaultDevices) and returns the network spec, the disk image ("":
// none) and the size a new image gets.
func (d *deviceFlags) resolve(machine node.Machine, guest string) (net, disk string, size int64, err error) {
	defNet, defDisk := node.DefaultDevices(machine, guest)
	net, disk = d.net, d.disk
	if net == "auto" {
		net = defNet
	}
	switch disk {
	case "auto":
		disk = defDisk
	case "none":
		disk = ""
	}
	size, err = parseSize(d.diskSize)
	if err != nil {
		return "", "", 0, fmt.Errorf("--disk-size: %w", err)
	}
	return net, disk, size, nil
}

// attached is what attach made for an unprotected machine (ftckpt run and
// restore): the guest's boot devices and how to release the host side.
type attached struct {
	boot    []vmm.BootDevice
	net     vmm.NetBackend
	netDev  *vmm.VirtioNet
	closers []func() error
}

func (a *attached) Close() error {
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// attach opens the backends the flags name for guest and attaches their
// devices to m, network then disk. The network backend is not started:
// call startNet once the machine is ready to receive.
func (d *deviceFlags) attach(m *vmm.Machine, guest string) (*attached, error) {
	a := &attached{}
	ok := false
	defer func() {
		if !ok {
			a.Close()
		}
	}()
	netSpec, diskPath, size, err := d.resolve(node.MachineKVM, guest)
	if err != nil {
		return nil, err
	}
	var devs vmm.Devices
	if netSpec != "none" {
		if a.net, err = node.OpenBackend(node.MachineKVM, netSpec); err != nil {
			return nil, err
		}
		a.closers = append(a.closers, a.net.Close)
		devs.Net = &vmm.NetConfig{Sink: a.net}
	}
	if diskPath != "" {
		disk, err := vmm.OpenOrCreateFileDisk(diskPath, size)
		if err != nil {
			return nil, fmt.Errorf("--disk %s: %w", diskPath, err)
		}
		a.closers = append(a.closers, disk.Close)
		devs.Disk = &vmm.BlkConfig{Disk: disk}
	}
	att, err := m.AttachDevices(devs)
	if err != nil {
		return nil, err
	}
	a.boot, a.netDev = att.Boot, att.Net
	ok = true
	return a, nil
}

// startNet starts delivering received frames to the guest.
func (a *attached) startNet() error {
	if a.net == nil {
		return nil
	}
	return a.net.Start(a.netDev)
}
