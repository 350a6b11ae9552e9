package node

import (
	"context"
	"fmt"
	"os"

	"github.com/ftckpt/ftckpt/witness"
)

// openFence opens the arbiter o names (a raft witness through o.TLS) and a
// fence on it owned by this process in role: "ROLE-HOST-PID", what the
// witness reports as the holder.
func openFence(o *Options, role Role) (witness.Arbiter, *witness.Fence, error) {
	arb, err := witness.OpenWith(o.Arbiter, witness.OpenOptions{TLS: o.TLS})
	if err != nil {
		return nil, nil, err
	}
	arb = o.ops.wrapArbiter(arb)
	host, _ := os.Hostname()
	fence := witness.NewFence(arb, fmt.Sprintf("%s-%s-%d", role, host, os.Getpid()))
	o.ops.setFence(fence, 0)
	return arb, fence, nil
}

// becomePrimary opens o's arbiter and wins, for this process, the
// generation after the current one.
func becomePrimary(ctx context.Context, o *Options) (witness.Arbiter, *witness.Fence, uint64, error) {
	arb, fence, err := openFence(o, RolePrimary)
	if err != nil {
		return nil, nil, 0, err
	}
	cur, err := arb.Current(ctx)
	if err != nil {
		arb.Close()
		return nil, nil, 0, fmt.Errorf("asking the witness who is primary: %w", err)
	}
	gen := cur.Generation + 1
	if _, err := fence.Acquire(ctx, gen); err != nil {
		arb.Close()
		return nil, nil, 0, fmt.Errorf("becoming primary (generation %d): %w", gen, err)
	}
	o.ops.setFence(fence, gen)
	return arb, fence, gen, nil
}
