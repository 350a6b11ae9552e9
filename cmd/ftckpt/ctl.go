package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/spf13/cobra"
)

func init() { register(newCtlCmd) }

func newCtlCmd() *cobra.Command {
	var path string
	var backup, asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ctl status | set epoch DURATION|auto | pause | resume | detach-backup | failover",
		Short: "Ask a running node, through its control socket",
		Long: `Ask a running node through its control socket (the node's --control; by
default the one primary on this host, or with --backup the one backup,
found in the default directory):

  status             role, peer, in sync or not, generation, the status line's figures
  set epoch 10ms     checkpoint primary: the interval between checkpoints, from the next epoch
  set epoch auto     checkpoint primary: adapt it between --min-epoch and --max-epoch
  pause, resume      hold the guest paused, and let it run again (checkpoints, or the log, go on);
                     both answer once the backup knows: a failover keeps the guest as left
  detach-backup      primary: take the next generation, let the backup go, run on alone
                     (a replay backup still pre-copying is let go without a contest)
  failover           hand the guest over to the backup, then stop (start this host
                     again as a backup). Checkpoint mode: the guest is paused, its
                     final checkpoint acknowledged and every output released; replay
                     mode: the whole log is shipped and replayed (a backup still
                     pre-copying gets the rest in the last stop). No output is lost`,
		Example: `  ftckpt ctl status
  ftckpt ctl --backup status --json
  ftckpt ctl --control /run/ftckpt/primary.sock set epoch 10ms`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := ctlRequest(args)
			if err != nil {
				return err
			}
			if path == "" {
				role := node.RolePrimary
				if backup {
					role = node.RoleBackup
				}
				if path, err = node.FindControlSocket(role); err != nil {
					return err
				}
			} else if backup {
				return errors.New("--backup and --control contradict each other: choose one")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			resp, err := node.Ask(ctx, path, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case asJSON:
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(resp)
			case req.Op == "status":
				fmt.Fprint(out, resp.Status.Text())
			default:
				fmt.Fprintln(out, resp.Message)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "control", "", "the node's control socket (default: the one primary's in "+node.ControlDir()+")")
	cmd.Flags().BoolVar(&backup, "backup", false, "ask this host's backup at its default socket")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the node's answer as JSON")
	cmd.Flags().DurationVar(&timeout, "timeout", 15*time.Second, "give up after this long (a failover, a pause or a resume waits up to 10s for the backup)")
	return cmd
}

// ctlRequest turns ftckpt ctl's arguments into a request.
func ctlRequest(args []string) (node.Request, error) {
	op := args[0]
	switch {
	case op == "set" && len(args) == 3:
		return node.Request{Op: op, Name: args[1], Value: args[2]}, nil
	case op == "set":
		return node.Request{}, errors.New("set takes a name and a value: set epoch 10ms, or set epoch auto")
	case len(args) > 1:
		return node.Request{}, fmt.Errorf("%s takes no arguments", op)
	}
	return node.Request{Op: op}, nil
}
