package replay

// Protected says whether the primary has a backup it records for now (not
// running alone). Safe to call from any goroutine.
func (p *Primary) Protected() bool { return p.protected.Load() }
