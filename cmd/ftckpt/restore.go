package main

import (
	"errors"
	"os"
	"time"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/spf13/cobra"
)

func init() { register(newRestoreCmd) }

func newRestoreCmd() *cobra.Command {
	var df deviceFlags
	var guest string
	var snapshotAfter time.Duration
	var snapshotFile string
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Continue a machine saved with run --snapshot",
		Long: `Restore a machine saved by "ftckpt run --snapshot" into a new VM and continue
it, printing its serial console. The snapshot is verified whole (magic,
version, checksum) before the machine runs; a damaged file is refused with
the reason. Give the same --guest, --net and --disk as the saving run: the
machine's devices must match.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (snapshotFile == "") != (snapshotAfter == 0) {
				return errors.New("--snapshot and --snapshot-after go together")
			}
			if err := df.validate(); err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			var devs *attached
			m, err := vmm.Restore(f, vmm.Config{Console: cmd.OutOrStdout()}, func(m *vmm.Machine) (err error) {
				devs, err = df.attach(m, guest)
				return err
			})
			if err != nil {
				if devs != nil {
					devs.Close()
				}
				return err
			}
			defer func() {
				m.Close()
				devs.Close()
			}()
			if err := devs.startNet(); err != nil {
				return err
			}
			return runMachine(m, snapshotAfter, snapshotFile)
		},
	}
	df.add(cmd)
	cmd.Flags().StringVar(&guest, "guest", "counter", "the guest the snapshot was taken of (for --net/--disk auto)")
	cmd.Flags().DurationVar(&snapshotAfter, "snapshot-after", 0, "pause and save the machine again after this long")
	cmd.Flags().StringVar(&snapshotFile, "snapshot", "", "file to save the machine to (with --snapshot-after)")
	return cmd
}
