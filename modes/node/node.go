package node

import (
	"context"
	"errors"
	"sync"
	"time"

	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Node is a node running in its role: Start returns it, Wait waits for its
// end. Its parts appear as the node builds them (Parts).
type Node struct {
	o    Options
	done chan struct{}
	err  error // set before done closes

	mu    sync.Mutex // protects parts
	parts Parts

	// ops is the operator's surface: metrics, control socket (control.go).
	ops *ops
	// handed, set as the node ends if it handed its guest over to rejoin
	// (rejoin.go), is its machine, kept open for the next node.
	handed *heldMemory
}

// Parts are a running node's machine and engine, for statistics
// (ftckpt bench, the status line, tests): nil until built, and only those
// of its mode and role (a backup gone live also has a primary's).
type Parts struct {
	// Machine is the guest's machine.
	Machine machine.Machine
	// Outputs is the primary's output buffer (a live backup's, in replay
	// mode).
	Outputs *outbuf.Buffer
	// The engines.
	CheckpointPrimary *ckmode.Primary
	CheckpointBackup  *ckmode.Backup
	ReplayPrimary     *replay.Primary
	ReplayBackup      *replay.Backup
}

// Start validates o, then builds and runs the node in the background until
// the guest powers off, ctx ends, or the role's rule stops it; Wait
// returns why. When ctx ends, a checkpoint primary given HandOverOnStop
// hands its guest over to a backup in sync first (see stopAsked) and ends
// with ErrHandedOver.
func Start(ctx context.Context, o Options) (*Node, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.TLS == nil && o.Role != RoleAlone {
		o.log().Warn("plain TCP: the link to the peer and to a raft witness is neither authenticated nor encrypted (--insecure)")
	}
	n := &Node{o: o, done: make(chan struct{}), ops: &ops{}}
	n.o.ops = n.ops
	asked := ctx
	if o.HandOverOnStop {
		// ctx's end asks the run to stop (stopAsked), which a checkpoint
		// primary does once it has handed its guest over. Otherwise it
		// ends the run at once, as a crash would (nodetest's crashes).
		ctx = context.WithoutCancel(ctx)
	}
	ctx, stop := context.WithCancelCause(ctx)
	n.ops.stop, n.ops.ending = stop, ctx.Done()
	if err := n.openOps(); err != nil {
		stop(err)
		return nil, err
	}
	unwatch := func() bool { return false }
	if o.HandOverOnStop {
		unwatch = context.AfterFunc(asked, func() { n.stopAsked(context.Cause(asked)) })
	}
	go func() {
		defer close(n.done)
		n.err = n.run(ctx)
		unwatch()
		if errors.Is(context.Cause(ctx), ErrHandedOver) {
			n.err = ErrHandedOver
		}
		stop(nil)
		n.closeOps()
	}()
	return n, nil
}

// Run is Start and Wait: it returns nil when the guest powered off,
// ctx.Err() when ctx ended (or ErrHandedOver, see Start), or what stopped
// the node (a primary that lost its backup and the witness's contest
// halts). A node given Rejoin that hands its guest over (ftckpt ctl
// failover) goes on as a backup that joins the new primary there, again
// after every such handover; not once ctx has ended.
func Run(ctx context.Context, o Options) error {
	for {
		n, err := Start(ctx, o)
		if err != nil {
			o.held.release()
			return err
		}
		err = n.Wait()
		o.held.release() // the next node's, if it did not
		o.held = n.handed
		if !errors.Is(err, ErrHandedOver) || o.Rejoin == "" || ctx.Err() != nil {
			o.held.release()
			return err
		}
		o.log().Warn("handed over: joining the new primary as its backup", "join", o.Rejoin)
		o.Role, o.Peer, o.Listen, o.Join = RoleBackup, "", "", o.Rejoin
	}
}

// Wait waits for the node's end and returns its cause (see Run).
func (n *Node) Wait() error {
	<-n.done
	return n.err
}

// Done is closed when the node has ended.
func (n *Node) Done() <-chan struct{} { return n.done }

// Parts returns what the node has built so far.
func (n *Node) Parts() Parts {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.parts
}

// set records a part the node built.
func (n *Node) set(update func(*Parts)) {
	n.mu.Lock()
	update(&n.parts)
	n.ops.partsChanged(&n.parts)
	n.mu.Unlock()
}

func (n *Node) run(ctx context.Context) error {
	o := &n.o
	switch {
	case o.Role == RoleAlone:
		return n.runAlone(ctx)
	case o.Mode == ModeReplay && o.Role == RolePrimary:
		return n.runReplayPrimary(ctx)
	case o.Mode == ModeReplay:
		return n.runReplayBackup(ctx)
	case o.Role == RolePrimary:
		return n.runCheckpointPrimary(ctx)
	default:
		return n.runCheckpointBackup(ctx)
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
	if errors.Is(err, ErrHandedOver) { // the backup is the primary now
		select {
		case <-b.Exited:
		case <-ctx.Done():
			b.Stop(LocalStopGrace)
		}
		return nil
	}
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
