package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Backups that join a running guest (the paper's FT VMotion, by state
// transfer): a primary running alone takes a backup through a full sync of
// pre-copy rounds while the guest runs, then epochs as usual.

// errJoinDropped marks a run whose joining backup was lost before the
// sync's commit was captured: the guest runs on alone, its outputs were
// never held for that backup, and no generation was asked for.
var errJoinDropped = errors.New("joining backup lost before its sync committed")

// goAlone releases every output held and lets new ones leave at once: the
// buffer is committed up to Position, which stays put until a sync captures
// its commit. Precondition: the epoch loop is not running.
func (p *Primary) goAlone() error {
	if err := p.out.Commit(p.pos.Load()); err != nil {
		return fmt.Errorf("releasing held outputs: %w", err)
	}
	return nil
}

// Protect replicates the running guest to the backup at the other end of
// conn (nil: none, the guest starts unprotected), and whenever the guest
// runs unprotected — alone from the start, its backup lost and the next
// generation won, or a joining backup lost — to the next backup that ln
// hands over (nil ln: none comes, and Protect waits for the guest's end).
// While the guest has a backup, or one is joining, backups that connect are
// turned away (their connection closed; a backup that joins tries again).
//
// Unprotected, the guest's outputs leave at once. A joining backup gets a
// full sync by pre-copy (sync) while the guest runs and its outputs still
// leave; from the pause that captures the sync's commit on, outputs wait
// for the backup's acks. Lost before that pause, the backup costs nothing:
// no output was held for it and the witness is not asked. Lost after it,
// the paper's rule applies (Run).
//
// unprotected, if set, is called on Protect's goroutine each time the guest
// starts to run unprotected with ln to take a backup; it must not block.
// Protect returns nil when the guest stops, ctx.Err() when ctx ends, or
// what halted the primary (an error wrapping witness.ErrHalt). It closes
// ln before it returns. Precondition: the guest is running; no Run of p is
// under way.
func (p *Primary) Protect(ctx context.Context, conn net.Conn, ln net.Listener, unprotected func()) error {
	arrivals := make(chan net.Conn)
	if ln != nil {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); p.turnAway(ln, arrivals) }()
		defer wg.Wait()
		defer ln.Close()
		p.log.Info("accepting backups", "addr", ln.Addr().String())
	}
	joining := false
	for {
		if conn != nil {
			err := p.run(ctx, conn, joining)
			switch {
			case err == nil:
				return nil // the guest stopped
			case errors.Is(err, ErrBackupLost):
				p.log.Warn("running alone", "err", err)
			case errors.Is(err, errJoinDropped):
			default:
				return err
			}
		} else if err := p.goAlone(); err != nil {
			return err
		}
		if ln != nil && unprotected != nil {
			unprotected()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.guest.Stopped():
			return nil
		case conn = <-arrivals:
			joining = true
			p.log.Info("a backup joins; pre-copying the guest's memory while it runs", "from", conn.RemoteAddr().String())
		}
	}
}

// turnAway accepts on ln until it is closed, handing each connection to
// arrivals if Protect waits for one there, else closing it: the guest has
// a backup, or one is joining.
func (p *Primary) turnAway(ln net.Listener, arrivals chan<- net.Conn) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		select {
		case arrivals <- conn:
		case <-time.After(100 * time.Millisecond):
			// Protect may be a moment from waiting (a backup just lost):
			// the short wait saves the joiner a retry.
			p.log.Info("turned a backup away: the guest has one", "from", conn.RemoteAddr().String())
			conn.Close()
		}
	}
}

// Follow is Serve with each primary's connection from next, which returns
// the next one (a backup that joins dials, and retries, there), an error
// that ends Follow, or ctx.Err().
func (b *Backup) Follow(ctx context.Context, next func(context.Context) (net.Conn, error)) (uint64, error) {
	for {
		conn, err := next(ctx)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if err != nil {
			return 0, err
		}
		gen, err := b.follow(ctx, conn)
		if gen == 0 && err == nil {
			continue // nothing to go live with, or another won: the next primary
		}
		return gen, err
	}
}
