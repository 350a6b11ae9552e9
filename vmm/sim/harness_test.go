package sim

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// testEnv is an Env with a scripted clock (step ns per Now call), an
// in-memory disk (zeros beyond its end) and captured outputs.
type testEnv struct {
	now     uint64
	step    uint64
	disk    []byte
	frames  [][]byte
	console bytes.Buffer
	nows    []uint64 // every answer of Now, in order
	fail    error    // returned by every disk and network call when set
}

func (e *testEnv) Now() uint64 {
	e.now += e.step
	e.nows = append(e.nows, e.now)
	return e.now
}

func (e *testEnv) ReadDisk(p []byte, off int64) error {
	if e.fail != nil {
		return e.fail
	}
	clear(p)
	if off < int64(len(e.disk)) {
		copy(p, e.disk[off:])
	}
	return nil
}

func (e *testEnv) WriteDisk(p []byte, off int64) error {
	if e.fail != nil {
		return e.fail
	}
	if end := int(off) + len(p); end > len(e.disk) {
		e.disk = append(e.disk, make([]byte, end-len(e.disk))...)
	}
	copy(e.disk[off:], p)
	return nil
}

func (e *testEnv) FlushDisk() error { return e.fail }

func (e *testEnv) SendFrame(f []byte) error {
	if e.fail != nil {
		return e.fail
	}
	e.frames = append(e.frames, bytes.Clone(f))
	return nil
}

func (e *testEnv) Console(p []byte) { e.console.Write(p) }

// rig drives a Machine as the engine does, without kicks: it completes
// accesses, and when the guest halts it delivers the next queued frame or
// advances the clock to the timer's deadline, polls the timers and
// injects.
type rig struct {
	t     testing.TB
	m     *Machine
	env   *testEnv
	rx    [][]byte // frames to deliver, one per halt
	exits map[machine.ExitKind]int
	off   bool
}

func newRig(t testing.TB, guest string, pages int, params ...Param) *rig {
	t.Helper()
	env := &testEnv{step: 1000}
	m, err := New(guest, pages, env, params...)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, m: m, env: env, exits: map[machine.ExitKind]int{}}
}

func newProgramRig(t testing.TB, src string, pages int) *rig {
	t.Helper()
	p, err := Assemble(Prelude + src)
	if err != nil {
		t.Fatal(err)
	}
	env := &testEnv{step: 1000}
	m, err := NewProgram(p, pages, env)
	if err != nil {
		t.Fatal(err)
	}
	return &rig{t: t, m: m, env: env, exits: map[machine.ExitKind]int{}}
}

// errIdle is returned by step when the guest is halted with nothing to
// wake it.
var errIdle = errors.New("halted with nothing to wake it")

// step runs the guest to its next stop and handles it.
func (r *rig) step() (machine.Exit, error) {
	m := r.m
	if m.Halted() {
		switch dl, ok := m.TimerDeadline(); {
		case len(r.rx) > 0:
			m.DeliverFrame(r.rx[0])
			r.rx = r.rx[1:]
		case ok:
			r.env.now = max(r.env.now, dl)
			m.PollTimers(r.env.now)
		default:
			return machine.Exit{}, errIdle
		}
		if _, err := m.InjectPending(); err != nil {
			return machine.Exit{}, err
		}
		if m.Halted() {
			return machine.Exit{}, errIdle
		}
	}
	e, err := m.Run()
	if err != nil {
		return e, err
	}
	r.exits[e.Kind]++
	if e.Kind.IsIO() {
		if err := m.Complete(&e); err != nil {
			if errors.Is(err, machine.ErrPowerOff) {
				r.off = true
			}
			return e, err
		}
	}
	if dl, ok := m.TimerDeadline(); ok && r.env.now >= dl {
		m.PollTimers(r.env.now)
	}
	if _, err := m.InjectPending(); err != nil {
		return e, err
	}
	return e, nil
}

// runUntil steps until done holds, the guest powers off or idles, or
// limit stops pass.
func (r *rig) runUntil(limit int, done func() bool) error {
	for i := 0; i < limit; i++ {
		if done != nil && done() {
			return nil
		}
		if _, err := r.step(); err != nil {
			return err
		}
	}
	return fmt.Errorf("not done after %d stops", limit)
}
