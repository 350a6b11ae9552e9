package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/ftckpt/ftckpt/witness"
	"github.com/spf13/cobra"
)

func init() { register(newWitnessCmd) }

func newWitnessCmd() *cobra.Command {
	var id, bind, peers, dataDir string
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "witness",
		Short: "Run one node of a raft witness cluster (decides which host may go live)",
		Long: `Run one node of a raft witness cluster. Primaries and backups name the cluster
with --arbiter raft://HOST:PORT,HOST:PORT,... and ask it for each new
generation; a majority of the nodes must be up for anyone to win one.

Start every node with the same --peers list ID=HOST:PORT,... (this node
included). HOST:PORT is a node's client address; its raft traffic uses
HOST:PORT+1. On first start each node bootstraps that configuration; later
starts read the membership from --data-dir (raft.db and snapshots/).

Clients and the other nodes are accepted only with mutual TLS 1.3 and a
certificate of the cluster's CA (--tls-cert, --tls-key, --tls-ca; ftckpt
certs init makes them), or, with --insecure, in plain TCP.

The node runs until SIGINT or SIGTERM, then shuts raft down cleanly.`,
		Example: `  ftckpt certs init /etc/ftckpt/certs --hosts 10.0.0.1,10.0.0.2,10.0.0.3
  ftckpt witness --id w1 --data-dir /var/lib/ftckpt/w1 \
      --peers w1=10.0.0.1:7000,w2=10.0.0.2:7000,w3=10.0.0.3:7000 \
      --tls-cert /etc/ftckpt/certs/10.0.0.1.crt --tls-key /etc/ftckpt/certs/10.0.0.1.key \
      --tls-ca /etc/ftckpt/certs/ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if id == "" {
				return errors.New("--id is required: this node's ID in --peers")
			}
			if dataDir == "" {
				return errors.New("--data-dir is required: where this node keeps its raft log and snapshots")
			}
			ps, err := witness.ParsePeers(peers)
			if err != nil {
				return fmt.Errorf("--peers: %w", err)
			}
			if bind == "" {
				for _, p := range ps {
					if p.ID == id {
						bind = p.Client
					}
				}
			}
			tlsID, err := tf.identity("the witness's clients and raft")
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return witness.RunNode(ctx, witness.ServeConfig{
				ID: id, Bind: bind, Peers: ps, DataDir: dataDir, TLS: tlsID,
				Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)),
			})
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "this node's ID, one of those in --peers")
	cmd.Flags().StringVar(&bind, "bind", "", "listen address for clients, HOST:PORT (raft listens on PORT+1); default: this node's address in --peers")
	cmd.Flags().StringVar(&peers, "peers", "", "every node of the cluster as ID=HOST:PORT,... (the same list on every node)")
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "directory for raft.db and snapshots")
	tf.add(cmd)
	cmd.AddCommand(newWitnessStatusCmd())
	return cmd
}

func newWitnessStatusCmd() *cobra.Command {
	var spec string
	var timeout time.Duration
	var tf tlsFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the current generation and its holder",
		Long: `Print the generation currently held at an arbiter and who holds it.
--arbiter takes raft://HOST:PORT,... (a witness cluster), disk:PATH (a lease
file) or disk:IMAGE#OFFSET (a lease block inside a disk image). A witness
cluster is asked with mutual TLS (--tls-cert, --tls-key, --tls-ca) or, with
--insecure, in plain HTTP.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var opts witness.OpenOptions
			if strings.HasPrefix(spec, "raft://") {
				var err error
				if opts.TLS, err = tf.load("the raft witness"); err != nil {
					return err
				}
			}
			arb, err := witness.OpenWith(spec, opts)
			if err != nil {
				return fmt.Errorf("--arbiter: %w", err)
			}
			defer arb.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := arb.Current(ctx)
			if err != nil {
				return err
			}
			if c.Generation == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "generation 0 (no primary has ever won)")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "generation %d held by %s\n", c.Generation, c.Owner)
			return nil
		},
	}
	cmd.Flags().StringVar(&spec, "arbiter", witness.DefaultSpec, "arbiter to ask: raft://HOST:PORT,..., disk:PATH or disk:IMAGE#OFFSET")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long (a cluster without quorum never answers)")
	tf.add(cmd)
	return cmd
}
