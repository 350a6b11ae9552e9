package node

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The requests that change the node: pause and resume, a planned failover
// (and the handover a stop asks for), detaching the backup.

// pauseResume holds or releases the guest, and answers once the backup
// has heard (or could not), so that a failover from then on keeps the
// guest as the operator left it.
func (n *Node) pauseResume(pause bool) (string, error) {
	op := map[bool]string{true: "pause", false: "resume"}[pause]
	if n.actingRole() == RoleBackup {
		return "", fmt.Errorf("%s: this node is a backup: its guest does not run", op)
	}
	h := n.ops.theHold()
	if h == nil {
		return "", fmt.Errorf("%s: %w", op, errNotRunning)
	}
	hears := n.backupHears()
	if !pause {
		if err := h.Release(); err != nil {
			return "", fmt.Errorf("resume: %w", err)
		}
		if hears == nil {
			return "guest running", nil
		}
		return "guest running; " + n.awaitBackup(hears, "runs it too", "keeps the guest paused"), nil
	}
	if err := h.Hold(); err != nil {
		return "", fmt.Errorf("pause: %w", err)
	}
	goesOn := "checkpoints go on"
	if n.o.Mode == ModeReplay {
		goesOn = "the log goes on"
	}
	return fmt.Sprintf("guest paused (%s; ftckpt ctl resume); %s", goesOn, n.awaitBackup(hears, "keeps it paused", "runs the guest")), nil
}

// backupHears returns, for a primary with a backup in sync, a test of
// whether that backup has heard of a hold or a release made after the
// call — it has acknowledged a checkpoint taken since (checkpoint mode:
// the checkpoint after the one being taken, which may have asked before)
// or the log entry that says so (replay mode) — and of whether it was
// lost meanwhile. Once it has heard, a failover keeps the guest as the
// operator left it. It returns nil for a node without such a backup.
func (n *Node) backupHears() func() (heard, lost bool) {
	parts := n.Parts()
	if p := parts.CheckpointPrimary; p != nil && p.Protected() {
		want := p.Position() + 1
		return func() (bool, bool) {
			_, acked, _, _, _ := p.Stats.Counters()
			return acked >= want, !p.Protected()
		}
	}
	if p := parts.ReplayPrimary; p != nil && p.Protected() {
		before := p.HoldLSN()
		return func() (bool, bool) {
			at := p.HoldLSN()
			return at > before && p.Stats.Acked.Load() >= at, !p.Protected()
		}
	}
	return nil
}

// awaitBackup waits up to failoverWait until hears (backupHears' test)
// says the backup has heard, or was lost, or the node is ending, and says
// how it went: what the backup does with the guest should it take over
// once it has heard (now), and before (then).
func (n *Node) awaitBackup(hears func() (heard, lost bool), now, then string) string {
	later := "one that syncs " + now + " should it take over"
	if hears == nil {
		return "no backup in sync now: " + later
	}
	deadline := time.Now().Add(failoverWait)
	for {
		heard, lost := hears()
		switch {
		case heard:
			return "the backup " + now + " should it take over"
		case lost:
			return "the backup was lost before it heard: " + later
		case time.Now().After(deadline):
			return fmt.Sprintf("the backup has not acknowledged it in %v: a failover before it does %s", failoverWait, then)
		}
		select {
		case <-n.ops.ending:
			return "this node stopped before the backup acknowledged it"
		case <-time.After(time.Millisecond):
		}
	}
}

// detachBackup lets the primary's backup go.
func (n *Node) detachBackup() (string, error) {
	if n.o.Mode == ModeReplay {
		p := n.Parts().ReplayPrimary
		if p == nil || n.actingRole() != RolePrimary {
			return "", errors.New("detach-backup: this node is not a primary")
		}
		ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
		defer cancel()
		if err := p.Detach(ctx); err != nil {
			return "", fmt.Errorf("detach-backup: %w", err)
		}
		gen, _ := n.ops.held()
		return fmt.Sprintf("backup detached: this node holds generation %d and runs on alone", gen), nil
	}
	p := n.Parts().CheckpointPrimary
	if p == nil || n.actingRole() != RolePrimary {
		return "", errors.New("detach-backup: this node is not a checkpoint primary")
	}
	if err := p.Detach(); err != nil {
		return "", fmt.Errorf("detach-backup: %w", err)
	}
	return "detaching the backup: the primary takes the next generation and runs on alone", nil
}

// actingRole is the role the node plays now: a backup that went live (its
// guest restored and started, or held) is a primary; one that has won the
// witness's generation and is on its way is still a backup.
func (n *Node) actingRole() Role {
	if n.o.Role == RoleBackup && n.ops.live.Load() {
		if g, _ := n.ops.held(); g > 0 {
			return RolePrimary
		}
	}
	return n.o.Role
}

// ErrHandedOver is how a primary node ends that handed its guest over to
// its backup (ftckpt ctl failover, or a checkpoint primary asked to stop:
// see Start).
var ErrHandedOver = errors.New("handed over to the backup")

// failoverWait bounds how long a planned failover waits for the backup to
// acknowledge the final checkpoint.
const failoverWait = 10 * time.Second

// failover hands a checkpoint primary's guest over to its backup, losing
// no output: the guest is held paused (handOver); the next checkpoint, of
// that final state, is acknowledged and every output released; then the
// engine stops without contesting the witness (as a stopping primary
// does), the backup finds the link closed, wins the next generation and
// goes live from that state (paused if the operator paused it), and this
// node ends with ErrHandedOver (and, given Rejoin, Run goes on as the new
// primary's backup). If the backup does not acknowledge within
// failoverWait or is lost, the guest runs on here (and stopAsked stops
// it). why says who asked, for the log (a replay primary's is ftckpt ctl
// failover: its stop hands over by itself).
func (n *Node) failover(why string) (string, error) {
	if n.o.Mode == ModeReplay {
		return n.replayFailover()
	}
	parts := n.Parts()
	p := parts.CheckpointPrimary
	switch {
	case n.actingRole() != RolePrimary:
		return "", errors.New("failover: this node is not a primary: ask the primary")
	case p == nil:
		return "", errors.New("failover: this node runs alone: it has no backup to hand over to")
	}
	if !n.Status().InSync {
		return "", errors.New("failover: the backup is not in sync: it has no state to take over")
	}
	h, _ := n.ops.theHold().(*hold) // checkpoint mode's
	if h == nil {
		return "", fmt.Errorf("failover: %w", errNotRunning)
	}
	if err := h.handOver(); err != nil {
		return "", fmt.Errorf("failover: pausing the guest: %w", err)
	}
	// From here the guest changes nothing: the checkpoint of epoch
	// Position() (or the one being taken) holds its final state, and says
	// whether the operator holds the guest (which the backup then keeps).
	final := p.Position()
	deadline := time.Now().Add(failoverWait)
	for {
		_, acked, _, _, _ := p.Stats.Counters()
		out := parts.Outputs.Stats()
		if acked >= final && out.HeldOutputs == 0 && out.Waiting == 0 {
			break
		}
		lost := !p.Protected()
		if time.Now().After(deadline) || out.Failed != nil || lost {
			h.endHandover()
			if lost {
				return "", fmt.Errorf("failover: the backup was lost before it acknowledged the final checkpoint (epoch %d): the guest was not handed over", final)
			}
			return "", fmt.Errorf("failover: the backup did not acknowledge the final checkpoint (epoch %d, acked %d, %d outputs held) in %v: the guest was not handed over",
				final, acked, out.HeldOutputs, failoverWait)
		}
		time.Sleep(time.Millisecond)
	}
	n.o.log().Warn("handing over to the backup ("+why+"): every output released; stopping", "epoch", final)
	n.ops.handedOver.Store(true)
	n.ops.stop(ErrHandedOver)
	return fmt.Sprintf("handing over: the backup takes over from epoch %d with every output released; this node %s", final, n.afterHandover()), nil
}

// replayFailover hands a replay primary's guest over to its backup: the
// primary stops as it does when asked to (SIGTERM): it logs where the
// guest stopped, ships the whole log and waits for the backup, which
// replays it to the end and goes live there. A backup still getting its
// full checkpoint by pre-copy gets the rest of it in the last stop and
// goes live there. As at any replay failover, the backup may repeat the
// last outputs; none is lost.
func (n *Node) replayFailover() (string, error) {
	p := n.Parts().ReplayPrimary
	switch {
	case n.actingRole() != RolePrimary:
		return "", errors.New("failover: this node is not a primary: ask the primary")
	case p == nil:
		return "", fmt.Errorf("failover: %w", errNotRunning)
	case !p.Protected():
		return "", errors.New("failover: this node runs alone: it has no backup to hand over to")
	case !p.InSync() && !p.Precopying():
		// It asked for a full checkpoint after losing part of the log:
		// the next boundary answers with a stop-and-copy.
		return "", errors.New("failover: the backup is waiting for a full checkpoint: ask again once ftckpt ctl status says in sync")
	}
	lsn := p.Stats.Entries.Load()
	how := "ships the rest of its log (lsn %d and on); the backup replays it and goes live where it stopped"
	if p.Precopying() {
		how = "sends the rest of the backup's full checkpoint, still being pre-copied, in its last stop (lsn %d); the backup goes live there"
	}
	n.o.log().Warn("handing over to the backup (ftckpt ctl failover): stopping", "lsn", lsn, "pre-copying", p.Precopying())
	n.ops.handedOver.Store(true)
	n.ops.stop(ErrHandedOver)
	return fmt.Sprintf("handing over: this node "+how+"; this node %s", lsn, n.afterHandover()), nil
}

// stopAsked ends the node's run because its caller asked (Start's ctx
// ended: SIGTERM, SIGINT) with cause. A checkpoint primary given
// HandOverOnStop first hands its guest over to a backup in sync, as ftckpt
// ctl failover does, so that the outputs it holds are released, not
// dropped: the backup would go live anyway, from the last acknowledged
// epoch, and the guest's clients would have to resend. If the handover
// cannot be made, the node just stops. A replay primary's stop hands over
// by itself (it ships the whole log).
func (n *Node) stopAsked(cause error) {
	n.ops.acting.Lock() // after an operator's request under way
	defer n.ops.acting.Unlock()
	// Only a checkpoint primary, or a live backup, has a CheckpointPrimary.
	p := n.Parts().CheckpointPrimary
	if n.o.HandOverOnStop && p != nil && p.Protected() && !n.ops.handedOver.Load() {
		_, err := n.failover("asked to stop")
		if err == nil {
			return
		}
		n.o.log().Warn("asked to stop: stopping the guest here; the backup, if it can, goes live from the last acknowledged epoch", "err", err)
	}
	n.ops.stop(cause)
}

// afterHandover says what this node does once it has handed its guest over.
func (n *Node) afterHandover() string {
	if n.o.Rejoin != "" {
		return "then joins it as its backup (--rejoin " + n.o.Rejoin + ")"
	}
	return "stops"
}
