package checkpoint

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/dirtylog"
	"github.com/ftckpt/ftckpt/outbuf"
)

// simGuest is a software machine standing in for KVM in the tests of the
// replication engine, where /dev/kvm cannot be opened. Its program is a
// counter: each step increments a counter kept in page 0, rewrites a few
// pages chosen by a PRNG whose state is also in page 0, stamps each with the
// counter (so memory has an invariant the test can check), and emits
// "count N" through the output buffer. Its "registers" (the step number)
// are its machine state. Every write goes through write(), which marks its
// dirty bitmap, as the VMM's tracked path does.
type simGuest struct {
	mem   []byte
	pages uint64

	mu      sync.Mutex
	cond    *sync.Cond
	paused  bool // requested
	inStep  bool
	dirty   *dirtylog.Bitmap
	started bool
	stopped chan struct{}
	steps   uint64 // register: steps executed
	// pending is the output of the last step, not yet taken by the output
	// buffer (as a virtio descriptor the device has not consumed): part of
	// the machine state, so a backup that goes live emits it again.
	pending uint64

	// emit sends an output; set before Start.
	emit func(n uint64) error
}

func newSimGuest(pages uint64) *simGuest {
	g := &simGuest{mem: make([]byte, pages*format.PageSize), pages: pages, dirty: dirtylog.NewBitmap(pages), stopped: make(chan struct{})}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *simGuest) write(off uint64, p []byte) {
	copy(g.mem[off:], p)
	for q := off / format.PageSize; q <= (off+uint64(len(p))-1)/format.PageSize; q++ {
		g.dirty.Set(q)
	}
}

func (g *simGuest) counter() uint64 { return binary.LittleEndian.Uint64(g.mem[0:]) }

// step runs one instruction of the program. Called with mu held, unpaused.
func (g *simGuest) step() (uint64, error) {
	n := g.counter() + 1
	rng := binary.LittleEndian.Uint64(g.mem[8:]) | 1
	var b [8]byte
	for i := 0; i < 3; i++ {
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		page := 1 + rng%(g.pages-1)
		binary.LittleEndian.PutUint64(b[:], n)
		g.write(page*format.PageSize+(rng>>20)%512*8, b[:])
	}
	binary.LittleEndian.PutUint64(b[:], rng)
	g.write(8, b[:])
	binary.LittleEndian.PutUint64(b[:], n)
	g.write(0, b[:])
	g.steps++
	if g.steps != n {
		return 0, fmt.Errorf("register says step %d, memory says %d: state torn", g.steps, n)
	}
	return n, nil
}

func (g *simGuest) run() {
	defer close(g.stopped)
	for {
		g.mu.Lock()
		for g.paused {
			g.cond.Wait()
		}
		g.inStep = true
		var err error
		if g.pending == 0 {
			g.pending, err = g.step()
		}
		n := g.pending
		g.mu.Unlock()
		if err == nil {
			err = g.emit(n)
		}
		g.mu.Lock()
		if err == nil {
			g.pending = 0
		}
		g.inStep = false
		g.cond.Broadcast()
		g.mu.Unlock()
		switch {
		case errors.Is(err, errOutputFull):
			time.Sleep(50 * time.Microsecond) // the device retries later
		case err != nil:
			return
		}
	}
}

// errOutputFull is a refused output: the buffer is full until an ack.
var errOutputFull = errors.New("output buffer full")

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

func (g *simGuest) Resume() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = false
	g.cond.Broadcast()
	return nil
}

func (g *simGuest) Harvest(dst *dirtylog.Bitmap) error {
	dst.Or(g.dirty)
	g.dirty.Clear()
	return nil
}

func (g *simGuest) SaveState() ([]byte, error) {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, g.steps), g.pending), nil
}

func (g *simGuest) RestoreState(s []byte) error {
	if len(s) != 16 {
		return errors.New("bad state")
	}
	g.steps, g.pending = binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])
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

// holdCounts wires a sim guest's outputs into an output buffer at the
// primary's position, as a device's output hook does: without blocking
// (a Hold that would wait is refused), since a blocked vCPU would stop the
// pause that the ack it waits for needs.
func holdCounts(g *simGuest, out *outbuf.Buffer, pos func() uint64, note func(n, pos uint64)) {
	g.emit = func(n uint64) error {
		p := pos()
		err := out.Hold(refuseWait, p, outbuf.NetFrame([]byte(fmt.Sprintf("count %d", n))))
		if errors.Is(err, context.Canceled) {
			return errOutputFull
		}
		if err == nil && note != nil {
			note(n, p)
		}
		return err
	}
}

// refuseWait is a done context: Hold with it queues if there is room and
// refuses otherwise.
var refuseWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()
