package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// subcommands holds the constructors of every subcommand. Each command's file
// adds its constructor from an init function, so commands stay independent.
var subcommands []func() *cobra.Command

func register(newCmd func() *cobra.Command) { subcommands = append(subcommands, newCmd) }

// newRootCmd builds the command tree. Every flag of every command can also be
// set as FTCKPT_<FLAG> in the environment (dashes become underscores) or in the
// file named by --config; a flag on the command line wins.
func newRootCmd() *cobra.Command {
	var configFile string
	root := &cobra.Command{
		Use:   "ftckpt",
		Short: "ftckpt is a fault-tolerant hypervisor (record/replay or checkpointing on KVM)",
		Long: `ftckpt runs a virtual machine on a primary host and keeps an exact copy on a
backup host; if the primary dies, the backup goes live and the guest's clients
never notice. See README.md for the modes and their trade-offs.

  ftckpt --mode replay --guest kv             primary here, backup as a local child
  ftckpt --mode checkpoint --vcpus 4          primary here, backup as a local child

  ftckpt certs init ./certs --hosts primaryhost,backuphost
  ftckpt --mode checkpoint --role backup --listen :7100 $TLS    (on backuphost)
  ftckpt --mode checkpoint --role primary --peer backuphost:7100 $TLS
    where TLS="--tls-cert ./certs/HOST.crt --tls-key ./certs/HOST.key --tls-ca ./certs/ca.crt"

A --role primary stopped by SIGTERM or SIGINT hands the guest over to its
backup first (as "ftckpt ctl failover"), so the guest goes on there with no
output lost (within 10 s; a second signal ends it at once); a local run
stops its backup with it.

Every connection between hosts (primary and backup, the raft witness) is
mutual TLS 1.3 with certificates of the cluster's CA; a primary or backup
started without --tls-* is refused unless --insecure (plain TCP) says so. A
local run makes certificates for itself.

Both modes run on KVM, or on a software machine of one vCPU where /dev/kvm
cannot be opened (--machine auto, the default; or kvm, sim).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return bindConfig(cmd, configFile)
		},
	}
	root.PersistentFlags().StringVar(&configFile, "config", "", "read flag values from this file (YAML, TOML or JSON)")
	addModeFlags(root)
	for _, newCmd := range subcommands {
		root.AddCommand(newCmd())
	}
	return root
}

// bindConfig fills every flag of cmd that was not given on the command line
// from the environment (FTCKPT_*) or the config file.
func bindConfig(cmd *cobra.Command, configFile string) error {
	v := viper.New()
	v.SetEnvPrefix("FTCKPT")
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	v.AutomaticEnv()
	if configFile != "" {
		v.SetConfigFile(configFile)
		if err := v.ReadInConfig(); err != nil {
			return fmt.Errorf("reading config file %s: %w", configFile, err)
		}
	}
	var firstErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if firstErr != nil || f.Changed || !v.IsSet(f.Name) {
			return
		}
		if err := cmd.Flags().Set(f.Name, v.GetString(f.Name)); err != nil {
			firstErr = fmt.Errorf("flag --%s from environment or config: %w", f.Name, err)
		}
	})
	return firstErr
}
