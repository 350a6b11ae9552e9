package sim

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// A miniature of the replay engine: record an execution on one machine,
// with kicks from another goroutine landing wherever they land, then
// replay it on another from the log alone, landing each asynchronous
// event by Signature with RunTo. The machines must end identical.

type entryKind int

const (
	entryBoundary entryKind = iota + 1 // frames, a timer poll, an injection
	entryExit                          // a synchronous exit
	entryLanding                       // a kick, named by its signature
)

type logEntry struct {
	kind     entryKind
	frames   [][]byte
	poll     uint64
	polled   bool
	injected bool
	exit     machine.Exit
	sig      machine.Signature
}

// recEnv is the recording Env: a virtual clock whose answers are logged.
type recEnv struct {
	testEnv
	clock uint64
}

func (e *recEnv) Now() uint64 {
	e.clock += 100
	e.nows = append(e.nows, e.clock)
	return e.clock
}

// playEnv answers Now from a recording and checks the frames sent.
type playEnv struct {
	testEnv
	answers []uint64
	want    [][]byte
}

func (e *playEnv) Now() uint64 {
	if len(e.answers) == 0 {
		panic("replay asked for the time more often than the recording")
	}
	v := e.answers[0]
	e.answers = e.answers[1:]
	return v
}

func (e *playEnv) SendFrame(f []byte) error {
	if len(e.want) == 0 || !bytes.Equal(e.want[0], f) {
		return fmt.Errorf("replay sent %q, the recording %q", f, e.want[:min(1, len(e.want))])
	}
	e.want = e.want[1:]
	return e.testEnv.SendFrame(f)
}

// snapshot is a machine captured between two stops of the recording.
type snapshot struct {
	state []byte
	mem   []byte
	disk  []byte
	at    int // log entries before it
	nows  int // Now answers before it
	sent  int // frames sent before it
}

// record runs m (on env) to power-off or idleness, delivering requests at
// random boundaries, and returns its log and a snapshot taken after snapAt
// entries. Before some runs it asks a kicker goroutine to kick the guest a
// few microseconds later, wherever it then is. A kick still outstanding
// when the guest halts, or 8 boundaries later, is waited for (it then
// lands at the next run), so that kicks land however the host schedules
// the kicker.
func record(t *testing.T, m *Machine, env *recEnv, requests [][]byte, seed uint64, snapAt int) ([]logEntry, *snapshot) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	var log []logEntry
	var snap *snapshot
	ask, kicked := make(chan struct{}, 1), make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		krng := rand.New(rand.NewPCG(seed, 2))
		for range ask {
			spin := time.Duration(krng.IntN(30)) * time.Microsecond
			for start := time.Now(); time.Since(start) < spin; {
			}
			m.Kick()
			kicked <- struct{}{}
		}
	}()
	defer func() { close(ask); wg.Wait() }()
	outstanding, waited := false, false // a kick asked for and not landed; its kicked signal taken
	age := 0                            // boundaries since the outstanding kick was asked for

	for steps := 0; ; steps++ {
		if steps > 200000 {
			t.Fatal("the recording does not end")
		}
		if snap == nil && len(log) >= snapAt {
			st, err := m.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			snap = &snapshot{state: st, mem: bytes.Clone(m.Memory()), disk: bytes.Clone(env.disk), at: len(log), nows: len(env.nows), sent: len(env.frames)}
		}
		// The boundary.
		b := logEntry{kind: entryBoundary}
		if len(requests) > 0 && (m.Halted() || rng.IntN(3) == 0) {
			b.frames = append(b.frames, requests[0])
			m.DeliverFrame(requests[0])
			requests = requests[1:]
		}
		if dl, ok := m.TimerDeadline(); ok && m.Halted() {
			env.clock = max(env.clock, dl)
		}
		if dl, ok := m.TimerDeadline(); ok && env.clock >= dl {
			b.poll, b.polled = env.clock, true
			m.PollTimers(env.clock)
		}
		var err error
		if b.injected, err = m.InjectPending(); err != nil {
			t.Fatal(err)
		}
		log = append(log, b)
		if age++; outstanding && !waited && (m.Halted() || age >= 8) {
			<-kicked
			waited = true
		}
		if m.Halted() {
			if _, ok := m.TimerDeadline(); !ok && len(requests) == 0 {
				return log, snap // idle for good
			}
			continue
		}
		if !outstanding && rng.IntN(2) == 0 {
			ask <- struct{}{}
			outstanding, waited, age = true, false, 0
		}
		m.Mark()
		e, err := m.Run()
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == machine.ExitKicked {
			if !waited {
				<-kicked
			}
			outstanding = false
			sig, _ := m.Signature()
			log = append(log, logEntry{kind: entryLanding, sig: sig})
			env.clock += uint64(rng.IntN(40_000))
			continue
		}
		log = append(log, logEntry{kind: entryExit, exit: e})
		if e.Kind.IsIO() {
			err := m.Complete(&e)
			log[len(log)-1].exit = e
			if errors.Is(err, machine.ErrPowerOff) {
				return log, snap
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
}

// play replays log on m. Its Env answers as the recording did.
func play(t *testing.T, m *Machine, log []logEntry) {
	t.Helper()
	for i, le := range log {
		switch le.kind {
		case entryBoundary:
			for _, f := range le.frames {
				m.DeliverFrame(f)
			}
			if le.polled {
				m.PollTimers(le.poll)
			}
			if ok, err := m.InjectPending(); err != nil || ok != le.injected {
				t.Fatalf("entry %d: injected %v (%v), recorded %v", i, ok, err, le.injected)
			}
		case entryLanding:
			// A kick that came before Run executed anything lands where
			// the last stop was: possibly a breakpoint RunTo would now
			// step over. So look here first.
			m.Mark()
			if sig, _ := m.Signature(); sig == le.sig {
				continue
			}
			for hits := 0; ; hits++ {
				e, err := m.RunTo(le.sig.RIP)
				if err != nil || e.Kind != machine.ExitBreakpoint {
					t.Fatalf("entry %d: running to the landing %+v: %v %v after %d hits", i, le.sig, e, err, hits)
				}
				if sig, _ := m.Signature(); sig == le.sig {
					break
				}
			}
		case entryExit:
			m.Mark()
			e, err := m.Run()
			if err != nil {
				t.Fatalf("entry %d: %v", i, err)
			}
			want := le.exit
			got := e
			if e.Kind.IsIO() {
				err = m.Complete(&got)
				if err != nil && !errors.Is(err, machine.ErrPowerOff) {
					t.Fatalf("entry %d: %v", i, err)
				}
			}
			if got != want {
				t.Fatalf("entry %d: diverged: exit %v data % x, recorded %v data % x", i, got, got.Data, want, want.Data)
			}
		}
	}
}

// sameMachines fails unless a and b have equal memory, state and
// signature.
func sameMachines(t *testing.T, what string, a, b *Machine) {
	t.Helper()
	if !bytes.Equal(a.Memory(), b.Memory()) {
		for p := 0; p < len(a.mem); p += PageSize {
			if !bytes.Equal(a.mem[p:p+PageSize], b.mem[p:p+PageSize]) {
				t.Fatalf("%s: memory differs, first in page %d", what, p/PageSize)
			}
		}
	}
	sa, _ := a.SaveState()
	sb, _ := b.SaveState()
	if !bytes.Equal(sa, sb) {
		t.Fatalf("%s: states differ:\n%+v\n%+v", what, a.cpu, b.cpu)
	}
	ga, _ := a.Signature()
	gb, _ := b.Signature()
	if ga != gb {
		t.Fatalf("%s: signatures differ: %+v %+v", what, ga, gb)
	}
}

func kvRequests(rng *rand.Rand, n int) [][]byte {
	var reqs [][]byte
	for range n {
		k := fmt.Sprint("k", rng.IntN(5))
		switch rng.IntN(4) {
		case 0, 1:
			reqs = append(reqs, KVRequest("INCR", k))
		case 2:
			reqs = append(reqs, KVRequest("GET", k))
		default:
			reqs = append(reqs, KVRequest("SET", k, fmt.Sprint(rng.IntN(1000))))
		}
	}
	return reqs
}

func TestRecordReplay(t *testing.T) {
	for _, c := range []struct {
		guest  string
		params []Param
		reqs   int
	}{
		{"tick", []Param{{"period_ns", 20_000}, {"work", 300}, {"ticks", 300}, {"every", 7}, {"work_pages", 4}}, 0},
		{"kv", []Param{{"persist_every", 3}}, 150},
	} {
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("%s/seed=%d", c.guest, seed), func(t *testing.T) {
				renv := &recEnv{}
				a, err := New(c.guest, 64, renv, c.params...)
				if err != nil {
					t.Fatal(err)
				}
				reqs := kvRequests(rand.New(rand.NewPCG(seed, 3)), c.reqs)
				log, snap := record(t, a, renv, reqs, seed, 40+int(seed)*97)
				landings, injected, midRun := 0, 0, 0
				for _, le := range log {
					if le.kind == entryLanding {
						landings++
						if le.sig.Dirty != hashOffset {
							midRun++ // the guest wrote memory before the kick
						}
					}
					if le.injected {
						injected++
					}
				}
				if landings < 10 || injected < 10 || len(renv.frames) < 10 {
					t.Fatalf("a weak recording: %d entries, %d landings, %d interrupts, %d frames", len(log), landings, injected, len(renv.frames))
				}

				// Replay from the start.
				penv := &playEnv{answers: slices.Clone(renv.nows), want: renv.frames}
				b, err := New(c.guest, 64, penv, c.params...)
				if err != nil {
					t.Fatal(err)
				}
				play(t, b, log)
				sameMachines(t, "replayed", a, b)
				if len(penv.want) != 0 || !bytes.Equal(penv.disk, renv.disk) {
					t.Fatalf("replay sent %d frames fewer, disks equal: %v", len(penv.want), bytes.Equal(penv.disk, renv.disk))
				}

				// Replay from the snapshot, on a machine of another guest
				// entirely: state and memory are everything.
				if snap == nil {
					t.Fatal("no snapshot taken")
				}
				cenv := &playEnv{answers: slices.Clone(renv.nows[snap.nows:]), want: renv.frames[snap.sent:]}
				cenv.disk = snap.disk
				other := map[string]string{"tick": "kv", "kv": "tick"}[c.guest]
				cm, err := New(other, 64, cenv)
				if err != nil {
					t.Fatal(err)
				}
				copy(cm.Memory(), snap.mem)
				if err := cm.RestoreState(snap.state); err != nil {
					t.Fatal(err)
				}
				play(t, cm, log[snap.at:])
				sameMachines(t, "restored from a snapshot and replayed", a, cm)
				t.Logf("%d entries, %d landings (%d after guest writes), %d interrupts, %d frames, %d instructions",
					len(log), landings, midRun, injected, len(renv.frames), a.Instructions())
			})
		}
	}
}

// TestScriptedDeterminism drives two machines with the same pseudo-random
// sequence of calls and the same Env answers: every stop and the final
// machines must be equal.
func TestScriptedDeterminism(t *testing.T) {
	for _, guest := range Guests() {
		t.Run(guest, func(t *testing.T) {
			var ms [2]*Machine
			var traces [2][]string
			for k := range ms {
				env := &testEnv{step: 777}
				params := map[string][]Param{"kv": {{"persist_every", 2}}, "tick": {{"period_ns", 30_000}}}[guest]
				m, err := New(guest, 64, env, params...)
				if err != nil {
					t.Fatal(err)
				}
				p, _ := guestProgram(guest)
				var pcs []uint64
				for _, a := range p.Symbols {
					if a >= EntryBase && a < p.Symbols["end"] {
						pcs = append(pcs, a)
					}
				}
				slices.Sort(pcs)
				rng := rand.New(rand.NewPCG(42, 7))
				reqs := kvRequests(rng, 400)
				trace := func(format string, args ...any) { traces[k] = append(traces[k], fmt.Sprintf(format, args...)) }
				for step := 0; step < 3000; step++ {
					if m.Halted() {
						if dl, ok := m.TimerDeadline(); ok {
							env.now = max(env.now, dl)
							m.PollTimers(env.now)
						} else {
							m.DeliverFrame(reqs[step%len(reqs)])
						}
						ok, err := m.InjectPending()
						trace("wake %v %v", ok, err)
						continue
					}
					var e machine.Exit
					var err error
					switch rng.IntN(8) {
					case 0:
						m.DeliverFrame(reqs[step%len(reqs)])
						continue
					case 1:
						env.now += uint64(rng.IntN(50_000))
						m.PollTimers(env.now)
						continue
					case 2:
						ok, err := m.InjectPending()
						trace("inject %v %v", ok, err)
						continue
					case 3:
						m.Mark()
						continue
					case 4, 5:
						e, err = m.RunTo(pcs[rng.IntN(len(pcs))])
					default:
						e, err = m.Run()
					}
					if err != nil {
						t.Fatalf("step %d: %v", step, err)
					}
					if e.Kind.IsIO() {
						if err := m.Complete(&e); err != nil {
							t.Fatalf("step %d: %v", step, err)
						}
					}
					sig, _ := m.Signature()
					trace("%v % x %+v", e, e.Data, sig)
				}
				ms[k] = m
			}
			if len(traces[0]) != len(traces[1]) {
				t.Fatalf("traces of %d and %d stops", len(traces[0]), len(traces[1]))
			}
			for i := range traces[0] {
				if traces[0][i] != traces[1][i] {
					t.Fatalf("stop %d: %s\nversus %s", i, traces[0][i], traces[1][i])
				}
			}
			sameMachines(t, "scripted", ms[0], ms[1])
		})
	}
}
