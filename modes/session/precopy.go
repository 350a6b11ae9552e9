// Package session holds what both modes' sessions between a primary and
// its backup share. Today: the plan of a full sync's pre-copy.
package session

import (
	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// Precopy plans the pre-copy of a full sync: passes over the guest's
// memory, and a mirrored disk's blocks, made while the guest runs. The
// first pass is everything; each later one is what was written while the
// one before was being sent. The passes end after Rounds of them, or once
// what the last left weighs at most Done pages (a disk block weighs as
// many pages as it holds): the rest goes in the final pause, with what is
// written meanwhile. Each mode sends the passes its own way (checkpoint
// mode from its epoch loop, replay mode at engine boundaries). Not safe for
// concurrent use.
type Precopy struct {
	rounds, done int
	pages        uint64
	blocks       *dirtylog.Blocks
	pass         int
}

// blockPages is what one disk block weighs against Done.
const blockPages = format.DiskBlockSize / format.PageSize

// NewPrecopy plans the pre-copy of a guest of pages pages and, if blocks
// is not nil, of the mirrored disk whose writes it logs; rounds and done
// as the modes' PrecopyRounds and PrecopyDone.
func NewPrecopy(rounds, done int, pages uint64, blocks *dirtylog.Blocks) *Precopy {
	return &Precopy{rounds: rounds, done: done, pages: pages, blocks: blocks}
}

// First returns the first pass: every page and every block (appended to
// pfns and blocks). Call it once the dirty log has been harvested, so that
// what is written from then on is in the next pass.
func (p *Precopy) First(pfns, blocks []uint64) ([]uint64, []uint64) {
	p.pass = 1
	for pfn := range p.pages {
		pfns = append(pfns, pfn)
	}
	if p.blocks != nil {
		p.blocks.MarkAll()
		blocks = p.blocks.Take(blocks)
	}
	return pfns, blocks
}

// Next is what follows the pass just sent: the pages in dirty (harvested
// since that pass began) appended to pfns, and, ok, the blocks written
// since appended to blocks: the next pass. Not ok, it is time for the
// final pause: pfns are the pages left (dirty keeps them too) and the
// blocks stay in the log, for the commit to take.
func (p *Precopy) Next(dirty *machine.Bitmap, pfns, blocks []uint64) (_, _ []uint64, ok bool) {
	pfns = dirty.AppendPages(pfns)
	left := dirty.Count()
	if p.blocks != nil {
		left += blockPages * p.blocks.Count()
	}
	if p.pass >= p.rounds || left <= p.done {
		return pfns, blocks, false
	}
	p.pass++
	if p.blocks != nil {
		blocks = p.blocks.Take(blocks)
	}
	return pfns, blocks, true
}

// Pass is the number of the pass last returned (1: the first).
func (p *Precopy) Pass() int { return p.pass }
