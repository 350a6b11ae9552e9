package machinetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// StepperSuite describes a machine.Stepper implementation to RunStepper.
type StepperSuite struct {
	// Open builds a fresh machine on env, not yet run, the same machine on
	// every call: one's state restores into another, and two given the
	// same calls and the same Env answers execute alike. It closes the
	// machine with t.Cleanup.
	Open func(t *testing.T, env machine.Env) machine.Stepper
	// Net says the guest posts receive buffers on its network device, so
	// that DeliverFrame writes frames into its memory; a guest that halts
	// with no timer armed is then woken with a frame.
	Net bool
	// Foreign returns states the machine must refuse (nil: only
	// corruptions of its own).
	Foreign Foreign
	// StateDiff compares states (nil: byte for byte).
	StateDiff StateDiff
	// Stops is how many stops each run records; 0 means 300.
	Stops int
}

// RunStepper runs the contract of machine.Stepper (and so of
// machine.Machine) against s's machines, driving them as the replay engine
// does: at each boundary the timers are polled (guest time jumps to the
// deadline while the guest halts) and pending interrupts injected, Mark
// starts each stop's interval, accesses are completed through a
// deterministic Env (time advances a microsecond per read; the disk is in
// memory).
//
//   - Memory is whole pages and stable.
//   - Harvest reports every page whose contents changed since the previous
//     Harvest, at every stop, and across a frame delivered into memory
//     (the VMM's writes), whatever Mark and Signature did in between.
//   - Two machines given the same calls stop at the same exits with the
//     same data and Signatures, and emit the same outputs.
//   - A state saved at a stop and restored, with memory, into a fresh
//     machine gives back the same state, and the restored machine goes on
//     exactly as the original does; bad states (truncated, corrupt, too
//     long, of another machine) are refused and change nothing.
//   - Kick before Run returns ExitKicked; a kick, before or during a run,
//     does not change the execution.
//   - RunTo stops at its address, with Signature's RIP there, and
//     otherwise executes exactly as Run: the same synchronous exits.
func RunStepper(t *testing.T, s StepperSuite) {
	if s.Stops == 0 {
		s.Stops = 300
	}
	open := func(t *testing.T, env *Env) *driver {
		return &driver{t: t, m: s.Open(t, env), env: env, net: s.Net}
	}

	t.Run("Memory", func(t *testing.T) {
		d := open(t, NewEnv())
		checkMemory(t, d.m)
		if err := d.m.Harvest(machine.NewBitmap(pages(d.m))); err != nil {
			t.Fatalf("Harvest into a bitmap of every page: %v", err)
		}
	})

	// Executions are compared where the guest is interrupted only in HLT
	// (quiet), so that no interrupt window is requested: see
	// machine.ExitWindow.
	quiet := func(t *testing.T, env *Env) *driver {
		d := open(t, env)
		d.quiet = true
		return d
	}

	t.Run("Harvest", func(t *testing.T) {
		a := open(t, NewEnv())
		a.tr = newTracker(t, a.m)
		a.record(s.Stops)
		if a.tr.changed == 0 {
			t.Fatalf("in %d stops no page changed: the check saw nothing", a.n)
		}
		if s.Net && a.landed == 0 {
			t.Fatalf("none of the %d frames delivered was found in memory: the VMM's writes went unchecked", a.frames)
		}
		t.Logf("%d stops, %d page changes reported, %d of %d frames seen in memory", a.n, a.tr.changed, a.landed, a.frames)
	})

	t.Run("Determinism", func(t *testing.T) {
		a, b := quiet(t, NewEnv()), quiet(t, NewEnv())
		b.compare(a.record(s.Stops))
		if !bytes.Equal(a.env.Printed(), b.env.Printed()) || !slices.EqualFunc(a.env.sent, b.env.sent, bytes.Equal) {
			t.Fatal("two machines given the same calls emitted different outputs")
		}
	})

	t.Run("SaveRestore", func(t *testing.T) {
		a := quiet(t, NewEnv())
		a.record(s.Stops / 2)
		if a.off {
			t.Fatal("the guest powered off before the state was saved")
		}
		state, err := a.m.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		again, err := a.m.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		s.StateDiff.same(t, again, state, "a second SaveState between runs differs from the first")
		mem := bytes.Clone(a.m.Memory())
		c := quiet(t, a.env.Clone())
		c.frames, c.n = a.frames, a.n
		restoreInto(t, c.m, mem, state, s.StateDiff)
		c.compare(a.record(s.Stops / 2))

		e := open(t, NewEnv())
		restoreInto(t, e.m, mem, state, s.StateDiff)
		var foreign map[string][]byte
		if s.Foreign != nil {
			foreign = s.Foreign(t)
		}
		checkRefuses(t, e.m, state, foreign, s.StateDiff)
	})

	t.Run("Kick", func(t *testing.T) {
		want := quiet(t, NewEnv()).record(s.Stops)
		a := quiet(t, NewEnv())
		a.kick = kickBefore
		a.compare(want)
		b := quiet(t, NewEnv())
		b.kick = kickDuring
		b.compare(want)
	})

	t.Run("RunTo", func(t *testing.T) {
		want := quiet(t, NewEnv()).record(s.Stops)
		i := slices.IndexFunc(want, func(s stop) bool { return s.exit.Kind == machine.ExitHalt })
		if i < 0 {
			t.Fatal("the guest never halted: RunTo is tried on the address after its HLT, where it comes back")
		}
		a := quiet(t, NewEnv())
		a.runTo, a.rip = true, want[i].exit.RIP
		a.compare(want)
		if a.breaks == 0 {
			t.Fatalf("RunTo(%#x) never stopped at its address", a.rip)
		}
		t.Logf("RunTo(%#x): %d breakpoint stops", a.rip, a.breaks)
	})
}

// stop is one recorded stop of a driver.
type stop struct {
	// before is what the boundary did: the interrupts it delivered and
	// the frames it handed over, in order ("i" or "f").
	before string
	exit   machine.Exit
	// sig is the Signature at the exit, before Complete.
	sig machine.Signature
}

func (s stop) String() string {
	return fmt.Sprintf("[%s] %v data % x sig %+v", s.before, s.exit, s.exit.Data[:s.exit.Size], s.sig)
}

func stops(s []stop) string {
	var b strings.Builder
	for _, x := range s {
		fmt.Fprintf(&b, "\t%v\n", x)
	}
	return b.String()
}

type kickMode uint8

const (
	kickNone   kickMode = iota
	kickBefore          // Kick, then Run: it must return ExitKicked
	kickDuring          // Kick from another goroutine as the run starts, at every kickDuringEvery stops
)

// kickDuringEvery spaces kicks from another goroutine: each costs a
// goroutine that a busy host may take long to schedule.
const kickDuringEvery = 10

// driver drives a Stepper as the replay engine does (see RunStepper).
type driver struct {
	t   *testing.T
	m   machine.Stepper
	env *Env
	net bool
	// quiet: interrupts come only while the guest halts (timers are
	// polled and frames delivered only then), so that none waits for a
	// window.
	quiet bool
	// frames is how many frames were delivered (the next one's index).
	frames int
	off    bool
	// n counts the stops recorded.
	n int

	// tr, if set, checks Harvest at every stop and around every frame;
	// landed counts the frames it found written into memory.
	tr     *tracker
	landed int
	kick   kickMode
	// runTo: every run is RunTo(rip); breaks counts its breakpoint stops.
	runTo  bool
	rip    uint64
	breaks int
}

// frameEvery: a guest with a network gets a frame at every this many
// stops, besides those that wake it from a halt.
const frameEvery = 7

// record records up to n stops (fewer if the guest powers off).
func (d *driver) record(n int) []stop {
	var out []stop
	for i := 0; i < n && !d.off; i++ {
		out = append(out, d.step())
	}
	return out
}

// compare records len(want) stops and fails the test at the first that
// differs from want.
func (d *driver) compare(want []stop) {
	d.t.Helper()
	var got []stop
	for i, w := range want {
		if d.off {
			d.t.Fatalf("stop %d: the guest powered off; the reference goes on with %v", d.n, w)
		}
		if got = append(got, d.step()); got[i] != w {
			from := max(0, i-5)
			d.t.Fatalf("stop %d (%d of the comparison) differs from the reference; from %d, this machine stopped at\n%s\nthe reference at\n%s",
				d.n-1, i, from, stops(got[from:]), stops(want[from:i+1]))
		}
	}
}

func (d *driver) fatalf(format string, args ...any) {
	d.t.Helper()
	d.t.Fatalf("stop %d: %s", d.n, fmt.Sprintf(format, args...))
}

// step runs the boundary, then the guest to its next synchronous exit.
func (d *driver) step() stop {
	d.t.Helper()
	var s stop
	d.boundary(&s)
	if err := d.m.Mark(); err != nil {
		d.fatalf("Mark: %v", err)
	}
	if d.kick == kickBefore {
		d.m.Kick()
		e, err := d.m.Run()
		if err != nil || e.Kind != machine.ExitKicked {
			d.fatalf("Kick then Run: %v, %v; want %v", e, err, machine.ExitKicked)
		}
	}
	for {
		e, err := d.run()
		if err != nil {
			d.fatalf("run: %v", err)
		}
		switch {
		case e.Kind == machine.ExitKicked && d.kick != kickNone:
			continue // a kick changes nothing: run on
		case e.Kind == machine.ExitBreakpoint && d.runTo:
			d.breaks++
			if e.RIP != d.rip {
				d.fatalf("RunTo(%#x) stopped at a breakpoint at %#x", d.rip, e.RIP)
			}
			if sig, err := d.m.Signature(); err != nil || sig.RIP != d.rip {
				d.fatalf("at RunTo(%#x)'s breakpoint, Signature is %+v, %v", d.rip, sig, err)
			}
			continue
		case !e.Kind.Synchronous():
			d.fatalf("run returned %v, which nothing asked for", e)
		}
		s.exit = e
		break
	}
	var err error
	if s.sig, err = d.m.Signature(); err != nil {
		d.fatalf("Signature: %v", err)
	}
	if s.exit.Kind.IsIO() {
		e := s.exit
		err := d.m.Complete(&e)
		switch {
		case errors.Is(err, machine.ErrPowerOff):
			d.off = true
		case err != nil:
			d.fatalf("Complete(%v): %v", e, err)
		}
		s.exit.Data = e.Data
	}
	if d.tr != nil {
		d.tr.check(d.t, fmt.Sprintf("stop %d (%v)", d.n, s.exit))
	}
	d.n++
	return s
}

// run is one Run (or RunTo), kicked as d.kick says.
func (d *driver) run() (machine.Exit, error) {
	var kicked chan struct{}
	if d.kick == kickDuring && d.n%kickDuringEvery == 0 {
		kicked = make(chan struct{})
		go func() { d.m.Kick(); close(kicked) }()
	}
	var e machine.Exit
	var err error
	if d.runTo {
		e, err = d.m.RunTo(d.rip)
	} else {
		e, err = d.m.Run()
	}
	if kicked != nil {
		<-kicked // a kick that missed this run stops the next one
	}
	return e, err
}

// boundary polls due timers (moving time to the deadline while the guest
// halts), hands the guest a frame at every frameEvery stops and whenever
// it halts with no timer, and injects what it can take, until it can run.
// Quiet, it polls timers and hands over frames only while the guest
// halts.
func (d *driver) boundary(s *stop) {
	d.t.Helper()
	if d.net && !d.quiet && d.n%frameEvery == frameEvery-1 {
		d.deliver(s)
	}
	for woken := 0; ; {
		if dl, ok := d.m.TimerDeadline(); ok && (!d.quiet || d.m.Halted()) {
			if d.m.Halted() {
				d.env.now = max(d.env.now, dl)
			}
			if d.env.now >= dl {
				d.m.PollTimers(d.env.now)
			}
		}
		delivered, err := d.m.InjectPending()
		if err != nil {
			d.fatalf("InjectPending: %v", err)
		}
		if delivered {
			s.before += "i"
		}
		if !d.m.Halted() {
			return
		}
		if _, ok := d.m.TimerDeadline(); ok {
			continue
		}
		if !d.net {
			d.fatalf("the guest halts with no timer armed and no network to wake it")
		}
		if woken++; woken > 100 {
			d.fatalf("the halted guest took none of 100 frames")
		}
		d.deliver(s)
	}
}

// deliver hands the guest the next frame; with a tracker, it checks that
// the pages the device wrote are harvested.
func (d *driver) deliver(s *stop) {
	f, payload := frame(d.frames)
	d.frames++
	s.before += "f"
	if d.tr == nil {
		d.m.DeliverFrame(f)
		return
	}
	d.tr.check(d.t, fmt.Sprintf("stop %d, before frame %d", d.n, d.frames-1))
	d.m.DeliverFrame(f)
	if holds(d.m.Memory(), d.tr.check(d.t, fmt.Sprintf("stop %d, frame %d delivered", d.n, d.frames-1)), payload) {
		d.landed++
	}
}
