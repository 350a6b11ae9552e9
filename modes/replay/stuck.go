package replay

import (
	"errors"
	"net"
	"time"
)

// ErrReplayerStuck ends the log of a backup whose replayer was stuck, and
// is wrapped by Follow's error if it then does not go live.
var ErrReplayerStuck = errors.New("this backup's replayer was stuck on its disk image for longer than the failure timeout; it dropped the link")

// watchReplayer drops the link once the replayer has spent longer than the
// failure timeout in one operation on its disk image. Such a backup cannot
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
		d := b.imageClock.Busy()
		if d <= b.cfg.FailureTimeout {
			return false
		}
		b.log.Error("the replayer is stuck on its disk image; dropping the link so that the primary goes on alone",
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
