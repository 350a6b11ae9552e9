package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/spf13/cobra"
)

func init() { register(newGuestsCmd) }

func newGuestsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "guests",
		Short: "List the bundled guests: KVM's, and the software machine's with their parameters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, "On KVM (ftckpt run, --mode checkpoint, --mode replay --machine kvm; parameters in guests/README.md):")
			for _, name := range guests.Names() {
				fmt.Fprintf(out, "  %-9s %s\n", name, guests.Describe(name))
			}
			fmt.Fprintln(out, "On the software machine (--mode replay --machine sim; --param NAME=NUMBER):")
			for _, name := range sim.Guests() {
				about, params, err := sim.DescribeGuest(name)
				if err != nil {
					return err
				}
				var ps []string
				for _, k := range slices.Sorted(maps.Keys(params)) {
					ps = append(ps, fmt.Sprintf("%s=%d", k, params[k]))
				}
				fmt.Fprintf(out, "  %-9s %s\n            defaults: %s\n", name, about, strings.Join(ps, " "))
			}
			return nil
		},
	}
}
