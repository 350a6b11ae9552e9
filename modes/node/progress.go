package node

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"

	format "github.com/ftckpt/ftckpt/checkpoint"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
)

// Progress of a primary's long copies — checkpoint mode's full sync, replay
// mode's pre-copy to a backup that joins — on the status writer: on a
// terminal a bar per round (pages as bytes, MB/s, ETA), otherwise a plain
// line as each round begins and one when the copy ends.

// progressTick is how often a bar is redrawn, and replay's pre-copy looked
// at.
const progressTick = 100 * time.Millisecond

// progress shows the copies of one node's primaries on w. Safe for
// concurrent use; stop ends it.
type progress struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex // protects bar and seen
	bar  *progressbar.ProgressBar
	seen map[any]bool // the engines followed
	done chan struct{}
	wg   sync.WaitGroup
}

// newProgress reports on w (nil: nowhere).
func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w), seen: map[any]bool{}, done: make(chan struct{})}
}

// isTerminal says whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// follow reports the copies of the primaries among parts not followed yet.
func (pr *progress) follow(parts *Parts) {
	if pr.w == nil {
		return
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if p := parts.CheckpointPrimary; p != nil && !pr.seen[p] {
		pr.seen[p] = true
		p.SetSyncObserver(pr.syncStep)
		if pr.tty {
			pr.poll(func() { pr.redrawSync(p) })
		}
	}
	if p := parts.ReplayPrimary; p != nil && !pr.seen[p] {
		pr.seen[p] = true
		last := precopyState{copied: p.Stats.Precopied.Load()}
		pr.poll(func() { last = pr.precopy(p.Stats, last) })
	}
}

// poll calls f every progressTick until stop.
func (pr *progress) poll(f func()) {
	pr.wg.Add(1)
	go func() {
		defer pr.wg.Done()
		t := time.NewTicker(progressTick)
		defer t.Stop()
		for {
			select {
			case <-pr.done:
				return
			case <-t.C:
				f()
			}
		}
	}()
}

// stop ends the reporting.
func (pr *progress) stop() {
	close(pr.done)
	pr.wg.Wait()
	pr.mu.Lock()
	pr.endBar()
	pr.mu.Unlock()
}

// mb is a page count in megabytes.
func mb(pages int) float64 { return float64(pages) * format.PageSize / 1e6 }

// andBlocks says a count of a mirrored disk's blocks, if any.
func andBlocks(blocks int) string {
	if blocks == 0 {
		return ""
	}
	return fmt.Sprintf(" and %d disk blocks (%.1f MB)", blocks, float64(blocks)*format.DiskBlockSize/1e6)
}

// keptBlocks says how many of a sync's disk blocks the backup's image had
// already (sent without their data), if any.
func keptBlocks(kept uint64) string {
	if kept == 0 {
		return ""
	}
	return fmt.Sprintf("; %d of its disk blocks were on the backup's image already", kept)
}

// keptPages says how many of a sync's pages the backup's memory had
// already (sent without their data), if any.
func keptPages(kept int) string {
	if kept == 0 {
		return ""
	}
	return fmt.Sprintf("; %d of its pages were in the backup's memory already", kept)
}

// syncStep reports a step of a checkpoint primary's full sync (its sync
// observer).
func (pr *progress) syncStep(s ckmode.SyncStep) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.endBar()
	if s.Finished {
		secs := time.Since(s.Began).Seconds()
		fmt.Fprintf(pr.w, "full sync: done in %.2fs, %d rounds, %d pages (%.1f MB, %.0f MB/s)%s shipped as %.1f MB%s%s\n",
			secs, s.Round, s.AllPages, mb(s.AllPages), mb(s.AllPages)/max(secs, 1e-9), andBlocks(s.AllBlocks), float64(s.Shipped)/1e6,
			keptPages(s.KeptPages), keptBlocks(uint64(s.KeptBlocks)))
		return
	}
	what := fmt.Sprintf("full sync: round %d, %d pages (%.1f MB)%s while the guest runs", s.Round, s.Pages, mb(s.Pages), andBlocks(s.Blocks))
	if s.Commit {
		what = fmt.Sprintf("full sync: round %d, the commit: %d pages (%.1f MB)%s with the guest paused", s.Round, s.Pages, mb(s.Pages), andBlocks(s.Blocks))
	}
	if !pr.tty {
		fmt.Fprintln(pr.w, what)
		return
	}
	pr.newBar(fmt.Sprintf("full sync round %d", s.Round), int64(s.Pages)*format.PageSize+int64(s.Blocks)*format.DiskBlockSize)
}

// redrawSync moves the bar of p's sync round on.
func (pr *progress) redrawSync(p *ckmode.Primary) {
	s, ok := p.Syncing()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if ok && pr.bar != nil {
		pr.bar.Set64(int64(s.Done)*format.PageSize + int64(s.DoneBlocks)*format.DiskBlockSize)
	}
}

// precopyState is what the last look at a replay pre-copy saw: its pass
// (0: none), the pages of that pass, when it was first seen, and the
// pages pre-copied (Stats.Precopied) before it.
type precopyState struct {
	pass, pages uint64
	began       time.Time
	copied      uint64
}

// precopy reports a replay primary's pre-copy from its statistics, as
// last saw it; it returns what it sees now. A pre-copy begun and ended
// between two looks shows only as its end (the pages pre-copied grew).
func (pr *progress) precopy(s *replay.Stats, last precopyState) precopyState {
	pass, left, pages := s.PrecopyPass.Load(), s.PrecopyLeft.Load(), s.PrecopyPassPages.Load()
	blocks, blocksLeft := s.PrecopyPassBlocks.Load(), s.PrecopyBlocksLeft.Load()
	copied := s.Precopied.Load() // grows before the pass goes back to 0
	pr.mu.Lock()
	defer pr.mu.Unlock()
	cur := last
	switch {
	case pass == 0 && last.pass > 0:
		pr.endBar()
		n := copied - last.copied
		secs := time.Since(last.began).Seconds()
		fmt.Fprintf(pr.w, "pre-copy: done in %.2fs, %d passes, %d pages (%.1f MB/s)%s%s; the backup commits at the next stop\n",
			secs, last.pass, n, mb(int(n))/max(secs, 1e-9), keptPages(int(s.KeptPages.Load())), keptBlocks(s.KeptBlocks.Load()))
		return precopyState{copied: copied}
	case pass == 0 && copied > last.copied:
		fmt.Fprintf(pr.w, "pre-copy: done, %d pages; the backup commits at the next stop\n", copied-last.copied)
		return precopyState{copied: copied}
	case pass == 0:
		return cur
	case pass != last.pass:
		if last.pass == 0 {
			cur.began = time.Now()
		}
		cur.pass, cur.pages = pass, pages
		pr.endBar()
		if !pr.tty {
			fmt.Fprintf(pr.w, "pre-copy: pass %d, %d pages (%.1f MB)%s while the guest runs\n", pass, pages, mb(int(pages)), andBlocks(int(blocks)))
			return cur
		}
		pr.newBar(fmt.Sprintf("pre-copy pass %d", pass), int64(pages)*format.PageSize+int64(blocks)*format.DiskBlockSize)
	}
	if pr.bar != nil {
		pr.bar.Set64(int64(pages-min(left, pages))*format.PageSize + int64(blocks-min(blocksLeft, blocks))*format.DiskBlockSize)
	}
	return cur
}

// newBar starts a bar of total bytes.
// Precondition: mu held.
func (pr *progress) newBar(desc string, total int64) {
	pr.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(pr.w), progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true), progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(progressTick), progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(pr.w) }))
}

// endBar finishes the bar, if any.
// Precondition: mu held.
func (pr *progress) endBar() {
	if pr.bar != nil {
		pr.bar.Finish()
		pr.bar = nil
	}
}
