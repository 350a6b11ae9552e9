package kvmmachine

import (
	"bytes"
	"errors"
	"math/rand"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// kvmTestEnv is the Env of the KVM tests. Recording, Now is a virtual clock
// that each read advances by a microsecond and the test moves to the timer's
// deadline while the guest halts; its answers are kept. Replaying, Now
// answers those, in order. The disk is a byte slice; outputs are kept.
type kvmTestEnv struct {
	t         *testing.T
	now       uint64
	nows      []uint64
	replaying bool
	disk      []byte
	frames    [][]byte
	console   bytes.Buffer
}

func (e *kvmTestEnv) Now() uint64 {
	if !e.replaying {
		e.now += 1000
		e.nows = append(e.nows, e.now)
		return e.now
	}
	if len(e.nows) == 0 {
		e.t.Error("the replayed guest read the time more often than the recorded one")
		return e.now
	}
	e.now, e.nows = e.nows[0], e.nows[1:]
	return e.now
}

func (e *kvmTestEnv) ReadDisk(p []byte, off int64) error {
	copy(p, e.disk[off:])
	return nil
}

func (e *kvmTestEnv) WriteDisk(p []byte, off int64) error {
	copy(e.disk[off:], p)
	return nil
}

func (e *kvmTestEnv) FlushDisk() error { return nil }

func (e *kvmTestEnv) SendFrame(frame []byte) error {
	e.frames = append(e.frames, slices.Clone(frame))
	return nil
}

func (e *kvmTestEnv) Console(p []byte) { e.console.Write(p) }

// kvmAction is one thing the test engine did at a boundary: PollTimers(poll)
// if poll != 0, else InjectPending, which returned delivered.
type kvmAction struct {
	poll      uint64
	delivered bool
}

// kvmStop is one recorded stop: the boundary actions before the run, the
// exit (with its data after Complete), and the signature of a kick.
type kvmStop struct {
	actions []kvmAction
	exit    machine.Exit
	sig     machine.Signature
}

// kvmRecorder is a miniature primary: it runs a Stepper, kicking it at
// random moments, and records every stop.
type kvmRecorder struct {
	t     *testing.T
	m     *Stepper
	env   *kvmTestEnv
	rnd   *rand.Rand
	stops []kvmStop
	off   bool
}

func newKVMMachine(t *testing.T, cfg StepperConfig, env *kvmTestEnv) *Stepper {
	t.Helper()
	vmmtest.RequireKVM(t)
	cfg.Track = trackBitmap
	m, err := NewStepper(cfg, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// boundary polls the timer when due (moving time to the deadline while the
// guest halts) and injects what the guest can take, until it can run.
func (r *kvmRecorder) boundary() []kvmAction {
	var acts []kvmAction
	for {
		if dl, ok := r.m.TimerDeadline(); ok {
			if r.m.Halted() {
				r.env.now = max(r.env.now, dl)
			}
			if r.env.now >= dl {
				r.m.PollTimers(r.env.now)
				acts = append(acts, kvmAction{poll: r.env.now})
			}
		}
		delivered, err := r.m.InjectPending()
		if err != nil {
			r.t.Fatal(err)
		}
		acts = append(acts, kvmAction{delivered: delivered})
		if !r.m.Halted() {
			return acts
		}
		if _, ok := r.m.TimerDeadline(); !ok {
			r.t.Fatalf("the guest halts with no timer armed:\n%s", r.env.console.String())
		}
	}
}

// kvmKick is how the recorder kicks one run.
type kvmKick uint8

const (
	kickNone   kvmKick = iota
	kickBefore         // Kick, then Run: it stops before the guest executes anything
	kickTimer          // Kick from a timer, after a delay
)

// record runs n stops (or to power-off), kicking the guest with chance
// kickPct in 100 per run: a quarter of those before the run, the rest after
// a random delay of up to maxDelay.
func (r *kvmRecorder) record(n, kickPct int, maxDelay time.Duration) {
	for i := 0; i < n && !r.off; i++ {
		switch x := r.rnd.Intn(100); {
		case x < kickPct/4:
			r.stop(kickBefore, 0)
		case x < kickPct:
			r.stop(kickTimer, time.Duration(r.rnd.Int63n(int64(maxDelay))))
		default:
			r.stop(kickNone, 0)
		}
	}
}

// stop records one stop: the boundary, then a run kicked as kick says.
func (r *kvmRecorder) stop(kick kvmKick, delay time.Duration) {
	s := kvmStop{actions: r.boundary()}
	if err := r.m.Mark(); err != nil {
		r.t.Fatal(err)
	}
	var timer *time.Timer
	switch kick {
	case kickBefore:
		r.m.Kick() // it stops at once
	case kickTimer:
		timer = time.AfterFunc(delay, r.m.Kick)
	}
	e, err := r.m.Run()
	if timer != nil {
		// One that fired after Run returned stops the next run at once.
		timer.Stop()
	}
	if err != nil {
		r.t.Fatal(err)
	}
	if e.Kind == machine.ExitKicked {
		if s.sig, err = r.m.Signature(); err != nil {
			r.t.Fatal(err)
		}
	}
	if e.Kind.IsIO() {
		err := r.m.Complete(&e)
		if errors.Is(err, machine.ErrPowerOff) {
			r.off = true
		} else if err != nil {
			r.t.Fatal(err)
		}
	}
	s.exit = e
	r.stops = append(r.stops, s)
}

// replay runs m through the recorded stops as a backup does: the same
// boundary actions, every synchronous exit checked, every kick landed where
// the guest is if the signature matches there (the kick may have stopped
// the primary before it executed anything, even right after another kick),
// else with RunTo until it matches (Backup.land).
func replayStops(t *testing.T, m *Stepper, stops []kvmStop) (landings, hits int) {
	t.Helper()
	for i, s := range stops {
		for _, a := range s.actions {
			if a.poll != 0 {
				m.PollTimers(a.poll)
				continue
			}
			delivered, err := m.InjectPending()
			if err != nil || delivered != a.delivered {
				t.Fatalf("stop %d: InjectPending %v, %v; recorded %v", i, delivered, err, a.delivered)
			}
		}
		if m.Halted() {
			t.Fatalf("stop %d: halted where the recorded guest ran", i)
		}
		if err := m.Mark(); err != nil {
			t.Fatal(err)
		}
		want := s.exit
		if want.Kind == machine.ExitKicked {
			landings++
			ok, err := m.Matches(s.sig)
			for n := 1; !ok; n++ {
				if err != nil {
					t.Fatal(err)
				}
				e, rerr := m.RunTo(s.sig.RIP)
				if rerr != nil || e.Kind != machine.ExitBreakpoint {
					t.Fatalf("stop %d: landing at %#x: %v, %v", i, s.sig.RIP, e, rerr)
				}
				hits++
				if n == 1_000_000 {
					t.Fatalf("stop %d: no match for %+v in %d stops at its RIP", i, s.sig, n)
				}
				ok, err = m.Matches(s.sig)
			}
			if err != nil {
				t.Fatal(err)
			}
			continue
		}
		e, err := m.Run()
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != want.Kind || e.RIP != want.RIP || e.Addr != want.Addr || e.Size != want.Size ||
			(e.Kind == machine.ExitPIOWrite || e.Kind == machine.ExitMMIOWrite) && e.Data != want.Data {
			t.Fatalf("stop %d: %v (data % x), recorded %v (data % x)", i, e, e.Data, want, want.Data)
		}
		if e.Kind.IsIO() {
			if err := m.Complete(&e); err != nil && !errors.Is(err, machine.ErrPowerOff) {
				t.Fatal(err)
			}
			if e.Data != want.Data {
				t.Fatalf("stop %d: %v read % x, recorded % x", i, e, e.Data, want.Data)
			}
		}
	}
	return landings, hits
}

// TestKVMTickGuestStepped steps the tick guest through 300 stops with no
// kicks: accesses completed through the Env's devices, HLTs ended by the
// PIT's interrupt injected from the userspace PIC.
func TestKVMTickGuestStepped(t *testing.T) {
	env := &kvmTestEnv{t: t}
	m := newKVMMachine(t, StepperConfig{Guest: "tick", Params: map[string]string{"hz": "1000", "every": "1"}}, env)
	r := &kvmRecorder{t: t, m: m, env: env, rnd: rand.New(rand.NewSource(1))}
	r.record(300, 0, 1)
	kinds, delivered := map[machine.ExitKind]int{}, 0
	for _, s := range r.stops {
		kinds[s.exit.Kind]++
		for _, a := range s.actions {
			if a.delivered {
				delivered++
			}
		}
	}
	if len(r.stops) != 300 || kinds[machine.ExitPIOWrite] == 0 || kinds[machine.ExitPIORead] == 0 || kinds[machine.ExitHalt] == 0 || delivered < kinds[machine.ExitHalt] {
		t.Fatalf("%d stops: %v, %d interrupts delivered", len(r.stops), kinds, delivered)
	}
	if !regexp.MustCompile(`^tick: start hz=1000 every=1 ticks=0 irqchip=user\ntick 1\n`).MatchString(env.console.String()) {
		t.Fatalf("console %q, exits %v", env.console.String(), kinds)
	}
	if len(env.nows) == 0 {
		t.Fatal("programming the PIT read no time from the Env")
	}
}

// TestKVMRecordReplay records a guest kicked at random moments and replays
// it on a second machine, landing every kick with RunTo as the probe says
// (with hardware breakpoints where this KVM honours them) and by single
// steps: same exits, same data, same console.
func TestKVMRecordReplay(t *testing.T) {
	for _, c := range []struct {
		name   string
		cfg    StepperConfig
		stops  int
		kick   int
		delays time.Duration
	}{
		{"counter", StepperConfig{Guest: "counter", Params: map[string]string{"every": "500"}}, 200, 20, 5 * time.Millisecond},
		{"tick", StepperConfig{Guest: "tick", Params: map[string]string{"hz": "2000", "every": "1", "ticks": "40"}}, 3000, 20, 2 * time.Millisecond},
	} {
		for _, single := range []bool{false, true} {
			name := c.name + "/probed"
			if single {
				name = c.name + "/single-step"
			}
			t.Run(name, func(t *testing.T) {
				penv := &kvmTestEnv{t: t}
				r := &kvmRecorder{t: t, m: newKVMMachine(t, c.cfg, penv), env: penv, rnd: rand.New(rand.NewSource(7))}
				r.record(c.stops, c.kick, c.delays)
				benv := &kvmTestEnv{t: t, replaying: true, nows: slices.Clone(penv.nows)}
				bcfg := c.cfg
				bcfg.SingleStep = single
				b := newKVMMachine(t, bcfg, benv)
				landings, hits := replayStops(t, b, r.stops)
				if landings == 0 {
					t.Fatal("no kick landed between exits: nothing was tested")
				}
				if benv.console.String() != penv.console.String() || len(benv.nows) != 0 {
					t.Fatalf("consoles differ or time reads left (%d):\n%s\n---\n%s", len(benv.nows), penv.console.String(), benv.console.String())
				}
				t.Logf("%d stops, %d landings in %d RunTo stops, %s", len(r.stops), landings, hits, landingMode(b))
			})
		}
	}
}

// TestKVMSaveRestore saves a running guest between two stops, restores it
// with its memory into a fresh machine, and replays there what the first
// one does next, kicks included.
func TestKVMSaveRestore(t *testing.T) {
	cfg := StepperConfig{Guest: "tick", Params: map[string]string{"hz": "2000", "every": "1"}}
	penv := &kvmTestEnv{t: t}
	a := newKVMMachine(t, cfg, penv)
	r := &kvmRecorder{t: t, m: a, env: penv, rnd: rand.New(rand.NewSource(3))}
	r.record(700, 10, 2*time.Millisecond)
	state, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	mem := slices.Clone(a.Memory())
	penv.nows, r.stops = nil, nil
	r.record(500, 20, 2*time.Millisecond)

	benv := &kvmTestEnv{t: t, replaying: true, nows: slices.Clone(penv.nows)}
	b := newKVMMachine(t, cfg, benv)
	corrupt := slices.Clone(state)
	corrupt[len(corrupt)/2] ^= 1
	if err := b.RestoreState(corrupt); err == nil {
		t.Fatal("a corrupt state was restored")
	}
	copy(b.Memory(), mem)
	if err := b.RestoreState(state); err != nil {
		t.Fatal(err)
	}
	replayStops(t, b, r.stops)
	if len(benv.nows) != 0 {
		t.Fatalf("%d time reads left", len(benv.nows))
	}
}

// landingMode says how m's RunTo lands.
func landingMode(m *Stepper) string {
	if m.land.singleStep {
		return "landing by single steps"
	}
	return "landing with hardware breakpoints"
}

// TestKVMLandsTwiceAtOnePoint: two kicks in a row with nothing executed in
// between (a kick before the run, or a timer's that fires after the run
// returned) are two landings at one point. The backup lands the second
// where the guest already is, without RunTo, which would first execute the
// instruction there and never come back to the same state.
func TestKVMLandsTwiceAtOnePoint(t *testing.T) {
	cfg := StepperConfig{Guest: "tick", Params: map[string]string{"hz": "2000", "every": "1", "ticks": "2"}}
	penv := &kvmTestEnv{t: t}
	r := &kvmRecorder{t: t, m: newKVMMachine(t, cfg, penv), env: penv, rnd: rand.New(rand.NewSource(1))}
	r.record(20, 0, 1)
	first := len(r.stops)
	r.stop(kickBefore, 0)
	r.stop(kickBefore, 0)
	r.record(20, 0, 1)
	a, b := r.stops[first], r.stops[first+1]
	if a.exit.Kind != machine.ExitKicked || b.exit.Kind != machine.ExitKicked || a.sig != b.sig {
		t.Fatalf("two kicks before the run: %v %+v, %v %+v; want two landings at one point", a.exit, a.sig, b.exit, b.sig)
	}
	for _, single := range []bool{false, true} {
		benv := &kvmTestEnv{t: t, replaying: true, nows: slices.Clone(penv.nows)}
		bcfg := cfg
		bcfg.SingleStep = single
		m := newKVMMachine(t, bcfg, benv)
		if landings, _ := replayStops(t, m, r.stops); landings != 2 || benv.console.String() != penv.console.String() {
			t.Fatalf("%s: %d landings, console %q, recorded %q", landingMode(m), landings, benv.console.String(), penv.console.String())
		}
	}
}

// TestKVMSignatureSkipsUnchangedPages: a page written with what it holds
// (as KVM reports pages that were not written: see Stepper.Signature)
// leaves a signature as it is, and so does a change to the guest's paging
// structures; a change to another page does not.
func TestKVMSignatureSkipsUnchangedPages(t *testing.T) {
	env := &kvmTestEnv{t: t}
	m := newKVMMachine(t, StepperConfig{Guest: "tick", Params: map[string]string{"hz": "2000", "every": "1"}}, env)
	r := &kvmRecorder{t: t, m: m, env: env, rnd: rand.New(rand.NewSource(1))}
	r.record(30, 0, 1)
	if err := m.Mark(); err != nil {
		t.Fatal(err)
	}
	sig, err := m.Signature()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := m.st.PagingPages()
	if err != nil || len(tables) == 0 {
		t.Fatalf("paging structures %v, %v", tables, err)
	}
	// write sets byte 0 of page to b (keeps it if b < 0) through the
	// VMM's tracked path.
	write := func(page uint64, b int) {
		gpa := int64(page * vmm.PageSize)
		p := make([]byte, vmm.PageSize)
		copy(p, m.Memory()[gpa:])
		if b >= 0 {
			p[0] = byte(b)
		}
		if _, err := m.st.Machine().Memory().WriteAt(p, gpa); err != nil {
			t.Fatal(err)
		}
	}
	same := func(what string) {
		t.Helper()
		if got, err := m.Signature(); err != nil || got != sig {
			t.Fatalf("after %s: %+v, %v; before %+v", what, got, err, sig)
		}
		if ok, err := m.Matches(sig); !ok || err != nil {
			t.Fatalf("after %s: Matches %v, %v", what, ok, err)
		}
	}
	info := uint64(vmm.BootInfoGPA / vmm.PageSize)
	for _, p := range append(slices.Clone(tables), info) {
		write(p, -1)
	}
	same("rewriting the page tables and the boot-info page as they are")
	pml4 := m.Memory()[vmm.PML4GPA]
	write(vmm.PML4GPA/vmm.PageSize, int(pml4^1<<5)) // the accessed bit of PML4 entry 0
	same("flipping an accessed bit in the PML4")
	old := m.Memory()[vmm.BootInfoGPA]
	write(info, int(old^0xff))
	if got, err := m.Signature(); err != nil || got.Dirty == sig.Dirty {
		t.Fatalf("changing the boot-info page did not change the dirty hash: %+v, %v", got, err)
	}
	write(info, int(old))
	same("changing the boot-info page back")
}

// TestKVMSignatureOfARestoredMachine: a machine restored into a fresh VM and
// the one it was saved from give the same signature at every stop after.
// The fresh one's KVM reports pages the guest only reads as dirty the first
// time it maps them (upstream KVM maps them writable), the other's does not.
func TestKVMSignatureOfARestoredMachine(t *testing.T) {
	cfg := StepperConfig{Guest: "tick", Params: map[string]string{"hz": "2000", "every": "1"}}
	penv := &kvmTestEnv{t: t}
	a := newKVMMachine(t, cfg, penv)
	r := &kvmRecorder{t: t, m: a, env: penv, rnd: rand.New(rand.NewSource(1))}
	r.record(200, 0, 1)
	state, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	benv := &kvmTestEnv{t: t, replaying: true}
	b := newKVMMachine(t, cfg, benv)
	copy(b.Memory(), a.Memory())
	if err := b.RestoreState(state); err != nil {
		t.Fatal(err)
	}
	penv.nows = nil
	for i := 0; i < 300; i++ {
		r.stop(kickNone, 0)
		benv.nows = append(benv.nows, penv.nows...)
		penv.nows = nil
		s := r.stops[len(r.stops)-1]
		for _, act := range s.actions {
			if act.poll != 0 {
				b.PollTimers(act.poll)
			} else if _, err := b.InjectPending(); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Mark(); err != nil {
			t.Fatal(err)
		}
		e, err := b.Run()
		if err != nil || e.Kind != s.exit.Kind || e.RIP != s.exit.RIP {
			t.Fatalf("stop %d: %v, %v; recorded %v", i, e, err, s.exit)
		}
		want, err := a.Signature()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := b.Signature(); err != nil || got != want {
			t.Fatalf("stop %d (%v): restored machine %+v, %v; its source %+v", i, e, got, err, want)
		}
		if e.Kind.IsIO() {
			if err := b.Complete(&e); err != nil {
				t.Fatal(err)
			}
		}
	}
}
