package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"

	"github.com/ftckpt/ftckpt/modes/node"
)

// Re-protection without a person (--respawn): a node that accepts backups
// starts one itself, as a child process joining it, each time its guest
// runs unprotected; that child, once live, does the same. A local pair
// therefore survives any number of kill -9 of whichever process is primary.

// runLocalRespawning is a local run with --respawn: the primary here,
// alone at first and accepting backups on loopback, starts the first
// backup itself and another after each loss, as every live backup after
// it does. extra are flags the backups get besides this process's own
// (the local run's certificates).
func runLocalRespawning(ctx context.Context, o node.Options, extra []string) error {
	o.Role, o.Peer, o.AcceptBackups = node.RolePrimary, "", "127.0.0.1:0"
	o.Respawn = spawnJoiningBackup(extra)
	return node.Run(ctx, o)
}

// pairFlags are the flags that place a process in the pair, and the
// operator's addresses, which two processes cannot share: a respawned
// backup gets its own place, the default control socket (named by its pid)
// and no metrics endpoint.
var pairFlags = []string{"role", "peer", "listen", "join", "accept-backups", "rejoin", "ready-fd", "respawn", "control", "metrics"}

// withoutPairFlags is args less the pairFlags and their values (--flag
// value or --flag=value; --respawn takes no separate value).
func withoutPairFlags(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		name, _, hasValue := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !strings.HasPrefix(args[i], "-") || !isPairFlag(name) {
			out = append(out, args[i])
			continue
		}
		if !hasValue && name != "respawn" && i+1 < len(args) {
			i++ // its value
		}
	}
	return out
}

func isPairFlag(name string) bool {
	for _, f := range pairFlags {
		if name == f {
			return true
		}
	}
	return false
}

// spawnJoiningBackup returns node.Options.Respawn: it starts this program
// again as a backup that joins addr, with this process's flags (less
// where it stands in the pair) and extra, accepting backups in turn on
// loopback once live and respawning too. The child shares this process's
// output and outlives it if this process is killed.
func spawnJoiningBackup(extra []string) func(addr string) (node.Backup, error) {
	return func(addr string) (node.Backup, error) {
		self, err := os.Executable()
		if err != nil {
			return node.Backup{}, err
		}
		args := append(withoutPairFlags(os.Args[1:]), "--role", "backup", "--join", addr, "--accept-backups", "127.0.0.1:0", "--respawn")
		args = append(args, extra...)
		child := exec.Command(self, args...)
		child.Stdout, child.Stderr = os.Stdout, os.Stderr
		if err := child.Start(); err != nil {
			return node.Backup{}, fmt.Errorf("starting a backup process: %w", err)
		}
		slog.Info("started a backup process", "pid", child.Process.Pid, "join", addr)
		exited := make(chan struct{})
		go func() { child.Wait(); close(exited) }()
		return node.Backup{Addr: addr, Exited: exited, Stop: stopper(child, exited)}, nil
	}
}
