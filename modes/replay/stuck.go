package replay

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// busyClock tells how long the replayer has been at work of its own on one
// item of the log: applying a checkpoint, completing an exit (writing the
// guest's disk write to its image), checking a landing. Waiting for the log
// and running the guest are left out: they go at the primary's pace, not
// at this host's. The replayer marks it; the watchdog reads it.
type busyClock struct {
	since atomic.Int64 // UnixNano the work began; 0 while the replayer waits or runs the guest
}

// working notes that the replayer is at work of its own from now on.
func (c *busyClock) working() { c.since.Store(time.Now().UnixNano()) }

// waiting notes that the replayer waits for the log or runs the guest.
func (c *busyClock) waiting() { c.since.Store(0) }

// busyFor is how long the replayer has been at work of its own, 0 while it
// waits or runs the guest.
func (c *busyClock) busyFor() time.Duration {
	began := c.since.Load()
	if began == 0 {
		return 0
	}
	return time.Since(time.Unix(0, began))
}

// ErrReplayerStuck ends the log of a backup whose replayer was stuck, and
// is wrapped by Follow's error if it then does not go live.
var ErrReplayerStuck = errors.New("this backup's replayer was stuck on one entry for longer than the failure timeout (its disk image hangs?); it dropped the link")

// watchReplayer drops the link once the replayer has spent longer than the
// failure timeout on one item (its disk image hangs). Such a backup cannot
// take over, yet its receiver goes on acknowledging what arrives (acks are
// for the log received, not replayed), so without this its primary would
// count on it, and with a quiet guest the queue never fills to push back:
// losing the link, the primary goes on alone at once. The log ends there:
// should the replayer come back, it replays what it received and asks the
// witness, as at any loss of its primary. It returns when stop closes or
// the log has ended.
func (b *Backup) watchReplayer(conn net.Conn, stop <-chan struct{}) {
	everyUntil(b.cfg.Heartbeat, stop, func() bool {
		if ended, _ := b.q.ended(); ended {
			return true
		}
		d := b.busy.busyFor()
		if d <= b.cfg.FailureTimeout {
			return false
		}
		b.log.Error("the replayer is stuck; dropping the link so that the primary goes on alone",
			"entries replayed", b.Stats.Replayed.Load(), "stuck for", d.Round(time.Millisecond), "failure timeout", b.cfg.FailureTimeout)
		b.q.close(ErrReplayerStuck)
		conn.Close()
		return true
	})
}

// everyUntil calls check every interval until it reports true or stop
// closes.
func everyUntil(interval time.Duration, stop <-chan struct{}, check func() bool) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if check() {
				return
			}
		}
	}
}
