package main

import (
	"fmt"
	"time"

	"github.com/ftckpt/ftckpt/modes/bench"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/spf13/cobra"
)

func init() { register(newBenchCmd) }

func newBenchCmd() *cobra.Command {
	var guest, epochs, machine, plotDir, jsonFile string
	var vcpus, memtouchPages, memtouchWriters int
	var copyWhere string
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Compare unprotected, replay and checkpoint modes on one guest and load",
		Long: `Run each workload unprotected, under replay mode and under checkpoint mode at
each epoch, then unprotected again, one configuration after the other, in this
process: a primary and a backup node on loopback TCP, a disk-lease witness in a
temporary directory. Each configuration is measured for --duration once its
backup is in sync (in checkpoint mode, once it has committed the first epoch
after the sync, whose page buffer is made then). The first table compares:

  UNIT/s          the guest's progress: instructions on the software machine
                  (--machine sim); on KVM, which has no instruction counter here,
                  kv replies or the pages memtouch dirtied
  slowdown        the unprotected rate (mean of both runs) over this one
  backup pace     replay: log entries the backup replayed per entry the
                  primary logged; below 100%, it falls behind
  wire MB/s       bytes from primary to backup per second; bytes/UNIT per unit
                  of progress
  req/s           kv: replies per second; reply p50: request to reply
  output p50      how long an output was held for the backup's ack
  landings/s      replay: interrupts delivered at a kick, by signature;
  visits/landing  the backup's stops at a landing's RIP before it matched

The second gives checkpoint mode's pause in its parts (stop, harvest, copy,
state capture, resume) with the dirty pages per epoch, beside the memcpy of as
many pages measured in the same run, and the share of epochs whose pages were
copied after the guest resumed (their "copy" is the write protection). On KVM
each epoch runs twice: as checkpoint mode does by default (pages copied after
the guest resumes where the pauses measure that cheaper) and with the pause
copying them. All configurations share this host's cores,
the backup's included. A configuration whose backup is lost, resynchronised or
out of sync in its window is measured again; if it lapses again, its rows are
marked (!). One whose backup does not get in sync in 30 s is started again,
once. A checkpoint-mode window lasts until at least four epochs were taken.
Progress, with what the nodes warned of then, goes to stderr, the tables to
stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var m node.Machine
			switch machine {
			case "sim":
				m = node.MachineSim
			case "kvm":
				m = node.MachineKVM
			default:
				return fmt.Errorf("--machine %q: want sim or kvm", machine)
			}
			p, err := bench.NewPlan(bench.Request{Machine: m, Guest: guest, Epochs: epochs, VCPUs: vcpus, Duration: duration,
				MemtouchPages: memtouchPages, MemtouchWriters: memtouchWriters, Copy: copyWhere})
			if err != nil {
				return err
			}
			results, err := bench.Run(cmd.Context(), p, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for i, w := range p.Workloads {
				if i > 0 {
					fmt.Fprintln(out)
				}
				fmt.Fprintf(out, "guest %s on %s: %s; %v per configuration\n", w.Guest, m, w.About, duration)
				bench.Print(out, w, results[i])
			}
			if plotDir != "" {
				if err := bench.Plot(plotDir, p, results); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "ftckpt bench: charts in %s\n", plotDir)
			}
			if jsonFile != "" {
				return bench.WriteJSON(jsonFile, p, results)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&guest, "guest", "all", "the workload: sim: tick, kv; kvm: kv, memtouch; or all")
	cmd.Flags().DurationVar(&duration, "duration", 2*time.Second, "measured time of each configuration")
	cmd.Flags().StringVar(&epochs, "epochs", "5ms,25ms,100ms", "checkpoint epochs to run, comma-separated")
	cmd.Flags().StringVar(&machine, "machine", "sim", "sim (the software machine) or kvm")
	cmd.Flags().IntVar(&vcpus, "vcpus", 1, "checkpoint mode's vCPUs on KVM")
	cmd.Flags().IntVar(&memtouchPages, "memtouch-pages", bench.DefaultMemtouchPages, "the pages memtouch rewrites flat out, on KVM (its memory grows to fit)")
	cmd.Flags().IntVar(&memtouchWriters, "memtouch-writers", 1, "how many of memtouch's vCPUs write, each its share of the pages (the others halt; more than one leaves replay out)")
	cmd.Flags().StringVar(&copyWhere, "copy", "", "where checkpoint mode copies dirty pages on KVM, a row for each of a comma-separated list of --copy-after-resume values: auto (checkpoint mode's default), always, never (default on KVM auto,never)")
	cmd.Flags().StringVar(&plotDir, "plot", "", "write charts (PNG and SVG) into this directory: slowdown and output delay against the epoch, wire bytes, pause against dirty pages")
	cmd.Flags().StringVar(&jsonFile, "json", "", "write the raw figures to this file")
	return cmd
}
