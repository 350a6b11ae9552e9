package checkpoint

import (
	"testing"
	"time"
)

// pauseOf is a pause of n pages that cost perPage each beside a stop the
// choice does not change.
func pauseOf(deferred bool, n int, perPage time.Duration) Pause {
	return Pause{Dirty: n, Deferred: deferred, Stop: 300 * time.Microsecond, Copy: time.Duration(n) * perPage}
}

// TestCopyChoiceRefuses: an ineligible epoch, or any once the machine
// failed to copy after resuming, is copied in the pause, and teaches
// nothing.
func TestCopyChoiceRefuses(t *testing.T) {
	c := copyChoice{eligible: deferPays, learn: true}
	for range 20 {
		if c.choose(100, 1) || c.choose(1000, 500) {
			t.Fatal("deferred 100 pages, or 1,000 in runs of 2")
		}
		c.observe(pauseOf(false, 1000, time.Microsecond))
	}
	if c.seen != [2]int{} {
		t.Fatalf("learned from ineligible epochs: %v", c.seen)
	}
	c.off = true
	for range 20 {
		if c.choose(4096, 1) {
			t.Fatal("deferred after the machine failed to")
		}
	}
	always := copyChoice{eligible: deferPays}
	for range 20 {
		if !always.choose(4096, 1) {
			t.Fatal("a choice that does not learn copied an eligible epoch in the pause")
		}
		always.observe(pauseOf(true, 4096, time.Millisecond))
	}
}

// TestCopyChoiceFollowsTheCosts drives the choice with pauses whose cost
// depends on the way chosen: it settles on the cheaper way, tries the
// other only every choiceExploreEvery epochs, and changes its mind when
// the costs swap.
func TestCopyChoiceFollowsTheCosts(t *testing.T) {
	c := copyChoice{eligible: deferPays, learn: true}
	costs := map[bool]time.Duration{false: 300 * time.Nanosecond, true: 500 * time.Nanosecond} // deferring costs more
	run := func(epochs int) (deferred int) {
		for range epochs {
			d := c.choose(1026, 2)
			if d {
				deferred++
			}
			c.observe(pauseOf(d, 1026, costs[d]))
		}
		return deferred
	}
	run(2 * choiceWarmup) // both ways measured
	if got := run(10 * choiceExploreEvery); got != 10 {
		t.Fatalf("deferring costs more: deferred %d of %d epochs, want only the %d explorations", got, 10*choiceExploreEvery, 10)
	}
	costs[false], costs[true] = costs[true], costs[false]
	run(choiceExploreEvery) // its exploration finds deferring cheaper now
	if got := run(10 * choiceExploreEvery); got != 10*choiceExploreEvery-10 {
		t.Fatalf("deferring costs less: deferred %d of %d epochs, want all but the %d explorations", got, 10*choiceExploreEvery, 10)
	}
}

// TestCopyModeNames: each mode parses from its name, other names are
// refused, and a config with no such mode does not validate.
func TestCopyModeNames(t *testing.T) {
	for _, m := range []CopyMode{CopyAuto, CopyAlways, CopyNever} {
		if got, err := ParseCopyMode(m.String()); err != nil || got != m {
			t.Errorf("ParseCopyMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseCopyMode("sometimes"); err == nil {
		t.Error(`ParseCopyMode("sometimes") accepted`)
	}
	c := DefaultConfig()
	c.CopyAfterResume = CopyNever + 1
	if err := c.Validate(); err == nil {
		t.Errorf("Validate accepted copy mode %v", c.CopyAfterResume)
	}
}
