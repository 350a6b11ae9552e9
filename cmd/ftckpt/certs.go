package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/spf13/cobra"
)

func init() { register(newCertsCmd) }

func newCertsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certs",
		Short: "Make the certificates of a cluster (mutual TLS between its hosts)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newCertsInitCmd())
	return cmd
}

func newCertsInitCmd() *cobra.Command {
	var hosts []string
	cmd := &cobra.Command{
		Use:   "init DIR",
		Short: "Create a CA and a certificate per host in DIR",
		Long: `Create in DIR a small cluster's certificates: a CA (ca.crt, and ca.key, readable
by its owner only) and, for each host of --hosts, HOST.crt and HOST.key: ECDSA
P-256, valid 825 days (the CA ten years), each for its host's name or address
and for localhost, 127.0.0.1 and ::1, usable to dial and to accept.

Copy to each host ca.crt and its own pair, and start every ftckpt there with
  --tls-cert HOST.crt --tls-key HOST.key --tls-ca ca.crt
(or FTCKPT_TLS_CERT, ... or the config file). Keep ca.key off the hosts: it
makes new members of the cluster.

Nothing is overwritten: run again with new hosts to add them, signed by the
same CA; a host that has files already keeps them.`,
		Example: `  ftckpt certs init ./certs --hosts 10.0.0.1,10.0.0.2,10.0.0.3
  ftckpt certs init ./certs --hosts backup2.example.net   # one more host, same CA`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			var clean []string
			for _, h := range hosts {
				if h = strings.TrimSpace(h); h != "" {
					clean = append(clean, h)
				}
			}
			if len(clean) == 0 {
				return errors.New("--hosts: no host named; want HOST,HOST,... (names or addresses)")
			}
			res, err := mtls.InitDir(dir, clean)
			if err != nil {
				return fmt.Errorf("certs init %s: %w", dir, err)
			}
			out := cmd.OutOrStdout()
			ca := filepath.Join(dir, mtls.CACertFile)
			if res.NewCA {
				fmt.Fprintf(out, "made the CA: %s (its key %s stays with you, not on the hosts)\n", ca, filepath.Join(dir, mtls.CAKeyFile))
			} else {
				fmt.Fprintf(out, "used the CA already in %s\n", dir)
			}
			for _, h := range res.Kept {
				fmt.Fprintf(out, "kept %s's certificate (already there)\n", h)
			}
			for _, h := range res.Made {
				cert, key := mtls.HostFiles(dir, h)
				fmt.Fprintf(out, "%s: --tls-cert %s --tls-key %s --tls-ca %s\n", h, cert, key, ca)
			}
			return nil
		},
	}
	hostname, _ := os.Hostname()
	cmd.Flags().StringSliceVar(&hosts, "hosts", []string{hostname}, "the cluster's hosts, by the names or addresses the others dial them at (comma-separated or repeated)")
	return cmd
}
