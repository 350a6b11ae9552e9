package checkpoint

import (
	"errors"
	"fmt"
	"time"
)

// epochSetting is an epoch policy set while the primary runs (SetEpoch).
type epochSetting struct {
	epoch time.Duration
	auto  bool
}

// SetEpoch changes the interval between checkpoints while the primary
// runs (ftckpt ctl set epoch): a fixed epoch, or, with auto, the --epoch
// auto policy between the configured MinEpoch and MaxEpoch (epoch is then
// ignored). It takes effect from the next epoch on: the one in progress
// ends as it was set. Safe to call from any goroutine.
func (p *Primary) SetEpoch(epoch time.Duration, auto bool) error {
	if !auto && epoch <= 0 {
		return fmt.Errorf("epoch %v: must be positive", epoch)
	}
	p.setting.Store(&epochSetting{epoch: epoch, auto: auto})
	return nil
}

// Epoch is the epoch setting in force: the interval and whether it adapts
// (then between MinEpoch and MaxEpoch, as Bounds says).
func (p *Primary) Epoch() (epoch time.Duration, auto bool) {
	c := p.policy()
	return c.Epoch, c.EpochAuto
}

// Bounds are the interval's bounds under the auto policy.
func (p *Primary) Bounds() (minEpoch, maxEpoch time.Duration) { return p.cfg.MinEpoch, p.cfg.MaxEpoch }

// policy is the configuration with the epoch setting in force.
func (p *Primary) policy() Config {
	c := p.cfg
	if s := p.setting.Load(); s != nil {
		c.EpochAuto = s.auto
		if !s.auto {
			c.Epoch = s.epoch
		}
	}
	return c
}

// Protected says whether the guest has a backup in sync now: the primary
// replicates to a backup that acknowledged its latest full sync. Safe to
// call from any goroutine.
func (p *Primary) Protected() bool { return p.replicating.Load() && p.syncAcked.Load() }

// ErrDetached is the cause ErrBackupLost wraps when the backup was
// detached on purpose (Detach).
var ErrDetached = errors.New("backup detached by the operator")

// Detach lets the backup go on purpose (ftckpt ctl detach-backup): the
// epoch loop stops, acks are no longer read, and the primary applies the
// backup-lost rule while the link still carries heartbeats — so the
// backup, which has seen nothing wrong, contests the next generation only
// after the primary has won it, and loses. Run then returns an error
// wrapping ErrBackupLost and ErrDetached, and the guest runs on alone. It
// returns at once, the request taken whatever the loop is doing (a pause,
// a sync); an error says the primary is not replicating (Run has not
// started, or has ended) or is detaching already. A request that comes as
// the run ends for another reason is moot: the backup is lost then, or
// the primary stops. Safe to call from any goroutine.
func (p *Primary) Detach() error {
	p.detachMu.Lock()
	defer p.detachMu.Unlock()
	if p.detach == nil {
		return errors.New("the primary is not replicating to a backup")
	}
	select {
	case p.detach <- struct{}{}:
		return nil
	default:
		return errors.New("the primary is detaching its backup already")
	}
}

// openDetach readies Detach for a run beginning and returns the channel
// its request comes on.
func (p *Primary) openDetach() <-chan struct{} {
	p.detachMu.Lock()
	defer p.detachMu.Unlock()
	p.detach, p.detached = make(chan struct{}, 1), false
	return p.detach
}

// closeDetach ends a run's Detach: later requests are refused.
func (p *Primary) closeDetach() {
	p.detachMu.Lock()
	defer p.detachMu.Unlock()
	p.detach = nil
}

// markDetached stops acks from releasing outputs; once it returns, none
// is releasing any.
func (p *Primary) markDetached() {
	p.detachMu.Lock()
	p.detached = true
	p.detachMu.Unlock()
}

// commitAcked releases the outputs of the epochs through epoch, which the
// backup acknowledged, unless the backup is being detached.
func (p *Primary) commitAcked(epoch uint64) error {
	p.detachMu.Lock()
	defer p.detachMu.Unlock()
	if p.detached {
		return nil
	}
	return p.out.Commit(epoch)
}

// CurrentEpoch is the interval between checkpoints now (under the auto
// policy, the one it chose last).
func (p *Primary) CurrentEpoch() time.Duration {
	p.Stats.mu.Lock()
	defer p.Stats.mu.Unlock()
	if p.Stats.EpochLen == 0 {
		e, _ := p.Epoch()
		return e
	}
	return p.Stats.EpochLen
}
