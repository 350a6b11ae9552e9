package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/witness"
	"github.com/spf13/cobra"
)

func init() { register(newStatusCmd) }

func newStatusCmd() *cobra.Command {
	var spec string
	var nodes []string
	var timeout time.Duration
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a cluster's state: who is primary, the generation, lag and health",
		Long: `Ask the witness (--arbiter) who holds the current generation, and each node
(--node: a control socket path on this host, or a node's metrics URL
http://HOST:PORT) how it is, and print one table. Without --node, every
node of this host that answers on a default control socket is asked. A raft witness is asked with mutual TLS (--tls-*) or --insecure.`,
		Example: `  ftckpt status --arbiter disk:/shared/lease
  ftckpt status --arbiter raft://w1:7000,w2:7000,w3:7000 --insecure \
      --node http://hostA:9100 --node http://hostB:9100`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(nodes) == 0 {
				if nodes = node.FindControlSockets(); len(nodes) == 0 {
					return fmt.Errorf("no node to ask: give --node PATH|http://HOST:PORT (no node of this host answers in %s)", node.ControlDir())
				}
			}
			var arb witness.Arbiter
			if spec != "" {
				var opts witness.OpenOptions
				if strings.HasPrefix(spec, "raft://") {
					var err error
					if opts.TLS, err = tf.load("the raft witness"); err != nil {
						return err
					}
				}
				var err error
				if arb, err = witness.OpenWith(spec, opts); err != nil {
					return fmt.Errorf("--arbiter: %w", err)
				}
				defer arb.Close()
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			fmt.Fprint(cmd.OutOrStdout(), node.AskCluster(ctx, spec, arb, nodes).Table())
			return nil
		},
	}
	cmd.Flags().StringVar(&spec, "arbiter", witness.DefaultSpec, "the witness: raft://HOST:PORT,..., disk:PATH or disk:IMAGE#OFFSET (empty: not asked)")
	cmd.Flags().StringArrayVar(&nodes, "node", nil, "a node to ask: its control socket path, or its metrics URL http://HOST:PORT (repeat for each)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	tf.add(cmd)
	return cmd
}
