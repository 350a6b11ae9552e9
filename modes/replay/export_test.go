package replay

import "time"

// SetHostClock scripts a primary's host clock for a test: elapsed
// replaces the host's monotonic time since the primary was made, for its
// guest's clock and its pacing of pre-copy rounds. It is called on the
// engine's goroutine only. Set before Run.
func SetHostClock(p *Primary, elapsed func() time.Duration) { p.clock.elapsed = elapsed }
