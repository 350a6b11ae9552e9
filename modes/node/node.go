package node

import (
	"context"
	"time"
)

// Run builds the node o describes and runs it in its role until the guest
// powers off (nil), ctx ends (ctx.Err()), or the role's rule stops it (a
// primary that lost its backup and the witness's contest halts). It
// validates o first.
func Run(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	switch {
	case o.Mode == ModeReplay && o.Role == RolePrimary:
		return runReplayPrimary(ctx, &o)
	case o.Mode == ModeReplay:
		return runReplayBackup(ctx, &o)
	case o.Role == RolePrimary:
		return runCheckpointPrimary(ctx, &o)
	default:
		return runCheckpointBackup(ctx, &o)
	}
}

// Backup is a backup node started apart from this process (RunLocal's
// child): where it listens, and its end.
type Backup struct {
	// Addr is where it accepts its primary.
	Addr string
	// Exited is closed when it has ended.
	Exited <-chan struct{}
	// Stop asks it to end and makes sure it has within grace.
	Stop func(grace time.Duration)
}

// LocalStopGrace is how long RunLocal's backup has to end once asked.
const LocalStopGrace = 5 * time.Second

// RunLocal runs the whole pair on one host, for trying ftckpt out: the
// backup started by startBackup (a child process sharing the terminal, so
// it keeps printing after the primary dies: kill -9 the primary to watch
// it go live) and the primary here, o with its Peer set to the backup. When
// the primary ends cleanly (the guest powered off) the backup is given a
// moment to finish too; otherwise, or after that, it is stopped.
func RunLocal(ctx context.Context, o Options, startBackup func() (Backup, error)) error {
	o.Role = RolePrimary
	check := o
	check.Peer = "127.0.0.1:0" // the backup's, known once it listens
	if err := check.Validate(); err != nil {
		return err
	}
	b, err := startBackup()
	if err != nil {
		return err
	}
	o.Peer = b.Addr
	err = Run(ctx, o)
	wait := time.Duration(0)
	if err == nil {
		wait = 10 * time.Second
	}
	select {
	case <-b.Exited:
	case <-time.After(wait):
		b.Stop(LocalStopGrace)
	}
	return err
}
