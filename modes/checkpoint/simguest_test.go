package checkpoint

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/ftckpt/ftckpt/vmm/machine"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
)

// simGuest is a software machine standing in for KVM in the tests of the
// replication engine, where /dev/kvm cannot be opened. Its program is a
// counter: each step increments a counter kept in page 0, rewrites a few
// pages chosen by a PRNG whose state is also in page 0, stamps each with the
// counter (so memory has an invariant the test can check), then performs
// the step's outputs. Its "registers" (step number, the output in progress
// and how far it got) are its machine state. Every memory write goes
// through write(), which marks its dirty bitmap, as the VMM's tracked path
// does.
//
// With a disk, step n's outputs are, in order: read back the record of step
// n-1 and stop with an error unless it is exactly that record (the guest's
// own check that its disk kept every write it saw complete, across
// failovers); write record n to slot n mod slots; every flushEvery steps,
// FLUSH; then send "count n" (with the request id, if any). An output the
// device refuses (vmm.ErrOutputFull) is retried when poke() is called (the
// device's Poll) or at the next Resume (the device's Wake).
//
// With requests set, a step runs only for a request the network delivered
// into a ring in page 1 (also guest memory, so replicated).
//
// It stays beside vmm/sim's CheckpointGuest, the real software machine
// (which the node-level tests of modes/node run under both modes), for
// what the engine tests need of a guest and a real one does not give:
// outputs at a steady rate with no client, each tied to the epoch that
// emitted it (emit); pages dirtied at random all over memory and tied to
// the registers, so that a torn checkpoint (one epoch's memory, another's
// registers) stops the guest at its next step; a disk it checks itself at
// every step, so that a write lost at a failover stops the live backup at
// once; and requests with ids (the multi-process test), answered exactly
// once.
type simGuest struct {
	mem   []byte
	pages uint64

	mu     sync.Mutex
	cond   *sync.Cond
	paused bool // requested
	// halted is set by Halt: the guest's host died; no Resume undoes it.
	halted  bool
	inStep  bool
	dirty   *machine.Bitmap
	started bool
	stopped chan struct{}
	// Registers: steps executed; the step whose outputs are in progress (0:
	// none), its request id, and the next of its outputs to perform. A
	// backup that goes live performs the rest again.
	steps, pending, pendingID, stage uint64
	// err is what stopped the guest, if anything did.
	err error
	// wake is poked by the device's Poll and by Resume.
	wake chan struct{}

	// snap is the copy-on-write snapshot under way (CopyOnWrite), nil when
	// none. Protected by mu.
	snap *simSnapshot
	// recycled counts the states given back (RecycleState). Protected by mu.
	recycled int

	// Set before Start.
	emit       func(n, id uint64) error
	disk       vmm.Disk
	slots      uint64
	span       uint64 // the pages its steps write, from the first (0: all)
	flushEvery uint64
	onFlushed  func(n uint64) error // after the FLUSH of step n completed
	requests   bool
}

// Output stages of a step.
const (
	stageCheck uint64 = 1 + iota
	stageWrite
	stageFlush
	stageSend
	stageDone
)

// Request ring in page 1: head:u64, tail:u64, then ringSize ids.
const (
	ringPage = 1
	ringSize = 64
)

func newSimGuest(pages uint64) *simGuest {
	g := &simGuest{mem: make([]byte, pages*format.PageSize), pages: pages, dirty: machine.NewBitmap(pages),
		stopped: make(chan struct{}), wake: make(chan struct{}, 1), slots: 64, flushEvery: 4}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// write is every write to memory, the guest's and its ring's (deliver).
// Called with mu held.
func (g *simGuest) write(off uint64, p []byte) {
	for q := off / format.PageSize; q <= (off+uint64(len(p))-1)/format.PageSize; q++ {
		if g.snap != nil && g.snap.copyPage(g.mem, q) {
			g.snap.waited++
		}
		g.dirty.Set(q)
	}
	copy(g.mem[off:], p)
}

// simSnapshot is a copy-on-write snapshot of some of a simGuest's pages,
// as the kernel's write protection takes one for KVM (package vmm/cow): a
// page is copied by the first write to it, or by a background goroutine
// that copies a page at a time, yielding to the guest in between.
type simSnapshot struct {
	at     map[uint64]int // page → its index in dst; removed once copied
	dst    []byte
	waited uint64
	done   chan struct{}
}

// copyPage copies page q into dst if it is a page of the snapshot not yet
// copied, and reports whether it did.
func (s *simSnapshot) copyPage(mem []byte, q uint64) bool {
	i, ok := s.at[q]
	if !ok {
		return false
	}
	copy(s.dst[i*format.PageSize:(i+1)*format.PageSize], mem[q*format.PageSize:])
	delete(s.at, q)
	return true
}

// CopyOnWrite implements machine.CopyOnWriter. Called while paused.
func (g *simGuest) CopyOnWrite(pfns []uint64, dst []byte) (func() (uint64, error), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.snap != nil {
		return nil, errors.New("a snapshot is under way")
	}
	s := &simSnapshot{at: make(map[uint64]int, len(pfns)), dst: dst, done: make(chan struct{})}
	for i, q := range pfns {
		s.at[q] = i
	}
	g.snap = s
	go func() {
		for _, q := range pfns {
			g.mu.Lock()
			s.copyPage(g.mem, q)
			g.mu.Unlock()
			runtime.Gosched()
		}
		g.mu.Lock()
		g.snap = nil
		g.mu.Unlock()
		close(s.done)
	}()
	return func() (uint64, error) {
		<-s.done
		g.mu.Lock()
		defer g.mu.Unlock()
		return s.waited, nil
	}, nil
}

func (g *simGuest) u64(off uint64) uint64 { return binary.LittleEndian.Uint64(g.mem[off:]) }

func (g *simGuest) putU64(off, v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	g.write(off, b[:])
}

func (g *simGuest) counter() uint64 { return g.u64(0) }

// hasRequestLocked says whether the ring holds a request.
func (g *simGuest) hasRequestLocked() bool {
	return g.u64(ringPage*format.PageSize+8) > g.u64(ringPage*format.PageSize)
}

// deliver puts request id into the ring, as a NIC writes a received frame
// into guest memory. It refuses while the guest is paused or not running
// (a quiesced device takes nothing) and when the ring is full.
func (g *simGuest) deliver(id uint64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	base := uint64(ringPage * format.PageSize)
	head, tail := g.u64(base), g.u64(base+8)
	if g.paused || !g.started || tail-head >= ringSize {
		return false
	}
	g.putU64(base+16+tail%ringSize*8, id)
	g.putU64(base+8, tail+1)
	g.cond.Broadcast()
	return true
}

// step runs one instruction of the program. Called with mu held, unpaused.
func (g *simGuest) step() error {
	var id uint64
	if g.requests {
		base := uint64(ringPage * format.PageSize)
		head := g.u64(base)
		id = g.u64(base + 16 + head%ringSize*8)
		g.putU64(base, head+1)
	}
	n := g.counter() + 1
	rng := g.u64(8) | 1
	for i := 0; i < 3; i++ {
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		span := g.pages
		if g.span != 0 {
			span = g.span
		}
		page := 2 + rng%(span-2)
		g.putU64(page*format.PageSize+(rng>>20)%512*8, n)
	}
	g.putU64(8, rng)
	g.putU64(0, n)
	g.steps++
	if g.steps != n {
		return fmt.Errorf("register says step %d, memory says %d: state torn", g.steps, n)
	}
	g.pending, g.pendingID, g.stage = n, id, stageCheck
	return nil
}

func (g *simGuest) run() {
	defer close(g.stopped)
	for {
		g.mu.Lock()
		for g.paused || g.halted || (g.pending == 0 && g.requests && !g.hasRequestLocked()) {
			g.cond.Wait()
		}
		g.inStep = true
		var err error
		if g.pending == 0 {
			err = g.step()
		}
		n, id, stage := g.pending, g.pendingID, g.stage
		g.mu.Unlock()
		if err == nil {
			stage, err = g.output(n, id, stage)
		}
		g.mu.Lock()
		g.stage = stage
		if stage == stageDone {
			g.pending = 0
		}
		g.inStep = false
		if err != nil && !errors.Is(err, vmm.ErrOutputFull) {
			g.err = err
		}
		g.cond.Broadcast()
		g.mu.Unlock()
		switch {
		case errors.Is(err, vmm.ErrOutputFull):
			<-g.wake // the device retries on Poll or Wake
		case err != nil:
			return
		}
	}
}

// output performs step n's outputs from stage on; it returns the stage
// reached (stageDone when all are done) and the error that stopped it.
func (g *simGuest) output(n, id, stage uint64) (uint64, error) {
	for {
		switch stage {
		case stageCheck:
			if g.disk != nil && n > 1 {
				if err := g.checkRecord(n - 1); err != nil {
					return stage, err
				}
			}
			stage = stageWrite
		case stageWrite:
			if g.disk != nil {
				if _, err := g.disk.WriteAt(record(n, id), int64(n%g.slots*recordSize)); err != nil {
					return stage, err
				}
			}
			stage = stageFlush
		case stageFlush:
			if g.disk != nil && n%g.flushEvery == 0 {
				if err := g.disk.Flush(); err != nil {
					return stage, err
				}
				if g.onFlushed != nil {
					if err := g.onFlushed(n); err != nil {
						return stage, err
					}
				}
			}
			stage = stageSend
		case stageSend:
			if err := g.emit(n, id); err != nil {
				return stage, err
			}
			return stageDone, nil
		default:
			return stage, fmt.Errorf("output stage %d", stage)
		}
	}
}

// checkRecord reads back the record of step n, which must be there.
func (g *simGuest) checkRecord(n uint64) error {
	var b [recordSize]byte
	if _, err := g.disk.ReadAt(b[:], int64(n%g.slots*recordSize)); err != nil {
		return fmt.Errorf("reading back record %d: %w", n, err)
	}
	got, _, ok := parseRecord(b[:])
	if !ok || got != n {
		return fmt.Errorf("disk lost a write the guest saw complete: slot of step %d holds record %d (valid %v)", n, got, ok)
	}
	return nil
}

// recordSize is one disk record: a sector.
const recordSize = 512

// record is step n's disk record: n, the request id, a pattern, n again.
func record(n, id uint64) []byte {
	b := make([]byte, recordSize)
	binary.LittleEndian.PutUint64(b[0:], n)
	binary.LittleEndian.PutUint64(b[8:], id)
	for i := 16; i < recordSize-8; i++ {
		b[i] = byte(n*7 + uint64(i))
	}
	binary.LittleEndian.PutUint64(b[recordSize-8:], n)
	return b
}

// parseRecord returns a record's step and request id, and whether it is a
// whole record (an untouched slot is all zero: not ok).
func parseRecord(b []byte) (n, id uint64, ok bool) {
	n, id = binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
	if n == 0 || binary.LittleEndian.Uint64(b[recordSize-8:]) != n {
		return n, id, false
	}
	for i := 16; i < recordSize-8; i++ {
		if b[i] != byte(n*7+uint64(i)) {
			return n, id, false
		}
	}
	return n, id, true
}

// poke is the device's Poll: a refused output is retried now.
func (g *simGuest) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Err is what stopped the guest, or nil.
func (g *simGuest) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

func (g *simGuest) Memory() []byte { return g.mem }

func (g *simGuest) CopyLive(dst []byte, pfn uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	copy(dst, g.mem[pfn*format.PageSize:])
}

// Pause waits out the step in progress, including its output: a vCPU
// parks only after its I/O completes, and this is the same contract.
func (g *simGuest) Pause() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = true
	for g.inStep {
		g.cond.Wait()
	}
	return nil
}

// Halt stops the guest for good, as its host's death does, once any step
// under way has ended: unlike Pause, the engine's next Resume (a capture
// that was under way) does not start it again.
func (g *simGuest) Halt() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.halted = true
	for g.inStep {
		g.cond.Wait()
	}
}

func (g *simGuest) Resume() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = false
	g.cond.Broadcast()
	g.poke() // devices wake and retry what they were refused
	return nil
}

func (g *simGuest) Harvest(dst *machine.Bitmap) error {
	dst.Or(g.dirty)
	g.dirty.Clear()
	return nil
}

// DirtySoFar implements machine.DirtyCounter: the pages written since the
// last Harvest, counted while the guest runs.
func (g *simGuest) DirtySoFar() (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dirty.Count(), nil
}

func (g *simGuest) SaveState() ([]byte, error) {
	var b []byte
	for _, r := range []uint64{g.steps, g.pending, g.pendingID, g.stage} {
		b = binary.LittleEndian.AppendUint64(b, r)
	}
	return b, nil
}

// RecycleState implements machine.StateRecycler as a machine that reused
// the buffer at once would: it overwrites it, so that a state given back
// before the engine is done with it reaches the backup garbled (registers
// that no longer match memory: the guest's next step after a failover
// finds it).
func (g *simGuest) RecycleState(s []byte) {
	for i := range s {
		s[i] = 0xee
	}
	g.mu.Lock()
	g.recycled++
	g.mu.Unlock()
}

func (g *simGuest) RestoreState(s []byte) error {
	if len(s) != 32 {
		return errors.New("bad state")
	}
	g.steps, g.pending = binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])
	g.pendingID, g.stage = binary.LittleEndian.Uint64(s[16:]), binary.LittleEndian.Uint64(s[24:])
	return nil
}

func (g *simGuest) Start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.started {
		return errors.New("started twice")
	}
	g.started = true
	go g.run()
	return nil
}

func (g *simGuest) Stopped() <-chan struct{} { return g.stopped }

// frame is the output of step n for request id (0: none).
func frame(n, id uint64) []byte {
	if id == 0 {
		return fmt.Appendf(nil, "count %d", n)
	}
	return fmt.Appendf(nil, "count %d id %d", n, id)
}

// parseFrame reverses frame.
func parseFrame(f []byte) (n, id uint64, err error) {
	if _, err := fmt.Sscanf(string(f), "count %d id %d", &n, &id); err == nil {
		return n, id, nil
	}
	if _, err := fmt.Sscanf(string(f), "count %d", &n); err != nil {
		return 0, 0, fmt.Errorf("frame %q: %w", f, err)
	}
	return n, 0, nil
}

// holdCounts wires a sim guest's frames into an output buffer at the
// primary's position, as a device's output hook does: without blocking
// (a Hold that would wait is refused), since a blocked vCPU would stop the
// pause that the ack it waits for needs.
func holdCounts(g *simGuest, out *outbuf.Buffer, pos func() uint64, note func(n, pos uint64)) {
	g.emit = func(n, id uint64) error {
		p := pos()
		err := out.Hold(refuseWait, p, outbuf.NetFrame(frame(n, id)))
		if errors.Is(err, context.Canceled) {
			return vmm.ErrOutputFull
		}
		if err == nil && note != nil {
			note(n, p)
		}
		return err
	}
}
