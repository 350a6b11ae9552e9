package checkpoint

// Write-protecting a run of dirty pages instead of copying it costs one
// UFFDIO_WRITEPROTECT, 2 µs on plain memory and 4–20 µs on guest memory
// KVM maps, plus 0.15–0.35 µs a page, against 0.2–0.45 µs a page copied
// (measured on this project's nested test host; bare metal is faster at
// both): it may pay from runs of about 8 pages, and copyChoice measures
// whether it does. Below a few hundred pages the pause has little copying
// to save, and each write that then waits for a copy costs more.
const (
	deferMinPages       = 256
	deferMinPagesPerRun = 8
)

// deferPays says whether n dirty pages in runs runs may be worth copying
// after the guest resumes.
func deferPays(n, runs int) bool { return n >= deferMinPages && runs*deferMinPagesPerRun <= n }

// How copyChoice learns: it alternates until it has choiceWarmup pauses of
// each way, then takes the cheaper, and every choiceExploreEvery eligible
// epochs the other, since the host's load and the guest change. Rarely
// enough that the other way's pauses stay out of the p99 (under 1 %): one
// such pause is enough to notice a swap (the way taken is measured every
// epoch; see TestCopyChoiceFollowsTheCosts).
const (
	choiceWarmup       = 4
	choiceExploreEvery = 128
)

// copyChoice decides, epoch by epoch, whether a pause copies its dirty
// pages or write-protects them for a copy after the guest resumes
// (machine.CopyOnWriter). Which is cheaper depends on the host more than
// the rule of thumb of deferPays can say: on a 2-core nested host, four
// vCPUs capturing their state while the pause write-protects 1,000 pages
// made the pause 0.1–0.5 ms longer than copying them, while one vCPU's was
// 0.1 ms shorter and at 8,000 pages either's was half. So it measures: the
// cost of a pause but its stop (which the choice does not change), per
// dirty page, for each way, and takes the cheaper. Only the epoch loop's
// goroutine uses it.
type copyChoice struct {
	// eligible says whether an epoch's n dirty pages in runs runs may be
	// deferred at all (deferPays).
	eligible func(n, runs int) bool
	// learn chooses by the costs measured; off, every eligible epoch is
	// deferred (CopyAlways).
	learn bool
	// off is set once the machine failed to copy pages after resuming:
	// every pause copies from then on.
	off bool

	// cost is each way's mean cost per dirty page, in ns (an average of
	// its last pauses: a moving one once it has 8); seen counts its pauses.
	// Index 0: copied in the pause; 1: after resuming.
	cost [2]float64
	seen [2]int
	// asked counts the eligible epochs; pending says the pause under way
	// is one (observe learns from it).
	asked   int
	pending bool
}

// choose says whether the epoch's n dirty pages in runs runs are to be
// copied after the guest resumes.
func (c *copyChoice) choose(n, runs int) bool {
	c.pending = false
	if c.off || !c.eligible(n, runs) {
		return false
	}
	c.pending = true
	if !c.learn {
		return true
	}
	c.asked++
	cheaper := c.cost[1] <= c.cost[0]
	switch {
	case c.seen[0] < choiceWarmup || c.seen[1] < choiceWarmup:
		return c.asked%2 == 0
	case c.asked%choiceExploreEvery == 0:
		return !cheaper
	}
	return cheaper
}

// observe learns from the pause just taken, if choose found it eligible.
func (c *copyChoice) observe(p Pause) {
	if !c.pending || p.Dirty == 0 {
		return
	}
	c.pending = false
	way := 0
	if p.Deferred {
		way = 1
	}
	perPage := float64(p.Total()-p.Stop) / float64(p.Dirty)
	c.seen[way]++
	weight := 1 / float64(min(c.seen[way], 8))
	c.cost[way] += weight * (perPage - c.cost[way])
}
