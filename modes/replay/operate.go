package replay

import (
	"context"
	"errors"
	"fmt"

	"github.com/ftckpt/ftckpt/witness"
)

// Protected says whether the primary has a backup it records for now (not
// running alone). Safe to call from any goroutine.
func (p *Primary) Protected() bool { return p.protected.Load() }

// InSync says whether the backup has applied the latest full checkpoint
// and acknowledged the log from it: it could take over now. It is false
// while a full checkpoint is on its way (a backup attaching, or one that
// asked for it). Safe to call from any goroutine.
func (p *Primary) InSync() bool {
	s := p.lastSync.Load()
	return p.protected.Load() && s > 0 && p.committed.Load() >= s
}

// Precopying says whether a full checkpoint is being pre-copied to the
// backup (one attaching, or resynchronising after a divergence or a
// rejection): it is not in sync, and a stop sends the rest of that
// checkpoint in the last stop, so that the backup goes live where the
// guest stopped (finishPrecopy). Safe to call from any goroutine.
func (p *Primary) Precopying() bool { return p.precopying.Load() }

// Detach lets the backup go on purpose (ftckpt ctl detach-backup): at its
// next boundary the engine stops acks from releasing outputs, wins the
// next generation while the link still carries heartbeats — so the
// backup, which has seen nothing wrong, contests it only after, and loses
// — then closes the link and runs on alone, releasing what it held. A
// backup still getting its full checkpoint by pre-copy is dropped at
// once, as it cannot go live (Precopying). It
// waits for the engine's answer until ctx ends. If the witness cannot be
// won the primary halts, as on losing its backup. Safe to call from any
// goroutine.
func (p *Primary) Detach(ctx context.Context) error {
	if !p.protected.Load() {
		return errors.New("the primary has no backup to detach")
	}
	done := make(chan error, 1)
	select {
	case p.detach <- done:
	default:
		return errors.New("a detach is under way")
	}
	p.poke()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// detachBackup is Detach's work, at a boundary. A backup still getting its
// full checkpoint by pre-copy cannot go live before it commits: it is let
// go as one lost then is, without a contest (the primary's generation does
// not change).
func (p *Primary) detachBackup(done chan<- error) error {
	if p.precopy != nil {
		p.log.Warn("detaching the backup before its full checkpoint (ftckpt ctl detach-backup): going on alone")
		p.dropPrecopying()
		done <- nil
		return nil
	}
	if !p.recording {
		done <- errors.New("the primary has no backup to detach")
		return nil
	}
	p.ackMu.Lock()
	p.acksOff = true // the contest suspends the fence: a release it refused would fail the buffer
	p.ackMu.Unlock()
	p.log.Warn("detaching the backup: contesting the next generation while the link is up")
	dctx, cancel := context.WithTimeout(p.ctx, p.cfg.DecideTimeout)
	defer cancel()
	if err := witness.PrimaryLostBackup(dctx, p.fence); err != nil {
		err = fmt.Errorf("detaching the backup: %w", err)
		done <- err
		return err
	}
	gen, _ := p.fence.Held()
	p.gen.Store(gen)
	p.recording = false
	p.protected.Store(false)
	p.Stats.BackupsLost.Add(1)
	p.disconnect()
	p.log.Warn(ErrBackupLost.Error(), "generation", gen, "cause", "detached by the operator")
	err := p.goAlone()
	done <- err
	return err
}
