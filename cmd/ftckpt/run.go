package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func init() { register(newRunCmd) }

// machineFlags are the flags that describe a machine to build.
type machineFlags struct {
	guest   string
	vcpus   int
	memory  string
	params  []string
	irqchip bool
}

func (f *machineFlags) add(cmd *cobra.Command, defaultGuest string) {
	cmd.Flags().StringVar(&f.guest, "guest", defaultGuest, "bundled guest to run: "+strings.Join(guests.Names(), ", "))
	cmd.Flags().IntVar(&f.vcpus, "vcpus", 1, fmt.Sprintf("number of vCPUs (1 to %d)", vmm.MaxVCPUs))
	cmd.Flags().StringVar(&f.memory, "memory", "64M", "guest memory size (16M to 64G, a multiple of 2M)")
	cmd.Flags().StringArrayVar(&f.params, "param", nil, "guest parameter key=value (repeatable)")
	cmd.Flags().BoolVar(&f.irqchip, "irqchip", true, "use KVM's in-kernel interrupt controllers (false: userspace interrupts, 1 vCPU)")
}

// parseParams parses --param key=value flags.
func parseParams(flags []string) (map[string]string, error) {
	params := map[string]string{}
	for _, p := range flags {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--param %q: want key=value", p)
		}
		params[k] = v
	}
	return params, nil
}

// config validates the flags and returns the machine configuration and the
// guest image, before anything touches KVM.
func (f *machineFlags) config(console io.Writer) (vmm.Config, []byte, error) {
	mem, err := parseSize(f.memory)
	if err != nil {
		return vmm.Config{}, nil, fmt.Errorf("--memory: %w", err)
	}
	params, err := parseParams(f.params)
	if err != nil {
		return vmm.Config{}, nil, err
	}
	cfg := vmm.Config{VCPUs: f.vcpus, MemSize: mem, IRQChip: f.irqchip, Params: params, Console: console}
	if err := cfg.Validate(); err != nil {
		return vmm.Config{}, nil, err
	}
	img, err := guests.Image(f.guest)
	if err != nil {
		return vmm.Config{}, nil, err
	}
	return cfg, img, nil
}

func newRunCmd() *cobra.Command {
	var mf machineFlags
	var df deviceFlags
	var snapshotAfter time.Duration
	var snapshotFile string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run a bundled guest unprotected (the baseline) and print its serial console",
		Long: `Run a bundled bare-metal guest on KVM with no replication: the baseline every
benchmark compares against. The guest's serial console is printed on stdout.
ftckpt exits with the guest's power-off status, or on Ctrl-C.

With --snapshot FILE --snapshot-after D, the machine is paused after D, saved
whole to FILE and stopped; "ftckpt restore FILE" continues it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, img, err := mf.config(cmd.OutOrStdout())
			if err != nil {
				return err
			}
			if (snapshotFile == "") != (snapshotAfter == 0) {
				return errors.New("--snapshot and --snapshot-after go together")
			}
			if err := df.validate(); err != nil {
				return err
			}
			m, err := vmm.New(cfg)
			if err != nil {
				return err
			}
			devs, err := df.attach(m, mf.guest)
			if err != nil {
				m.Close()
				return err
			}
			defer func() {
				m.Close() // quiesces the devices before their backends go
				devs.Close()
			}()
			if err := m.LoadBareMetal(img, devs.boot); err != nil {
				return err
			}
			if err := devs.startNet(); err != nil {
				return err
			}
			return runMachine(m, snapshotAfter, snapshotFile)
		},
	}
	mf.add(cmd, "counter")
	df.add(cmd)
	cmd.Flags().DurationVar(&snapshotAfter, "snapshot-after", 0, "pause and save the machine after this long")
	cmd.Flags().StringVar(&snapshotFile, "snapshot", "", "file to save the machine to (with --snapshot-after)")
	return cmd
}

// runMachine starts m and waits for it to power off, for an interrupt, or
// for the snapshot time.
func runMachine(m *vmm.Machine, snapshotAfter time.Duration, snapshotFile string) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, unix.SIGTERM)
	defer signal.Stop(sigs)
	var snapshot <-chan time.Time
	if snapshotAfter > 0 {
		snapshot = time.After(snapshotAfter)
	}
	if err := m.Start(); err != nil {
		return err
	}
	select {
	case <-m.Stopped():
		status, err := m.Wait()
		if err != nil {
			return err
		}
		if status != 0 {
			return fmt.Errorf("guest powered off with status %d", status)
		}
		return nil
	case s := <-sigs:
		return fmt.Errorf("stopped by %v", s)
	case <-snapshot:
		if err := m.Pause(); err != nil {
			return err
		}
		return saveSnapshot(m, snapshotFile)
	}
}

// saveSnapshot writes the paused machine to path, atomically: a snapshot
// file either is whole or does not exist.
func saveSnapshot(m *vmm.Machine, path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := m.WriteSnapshot(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "ftckpt: machine saved to %s\n", path)
	return nil
}
