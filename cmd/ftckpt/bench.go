package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"

	format "github.com/ftckpt/ftckpt/checkpoint"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/witness"
	"github.com/spf13/cobra"
)

// ftckpt bench: the same guest and load run unprotected, under replay mode
// and under checkpoint mode at each epoch, one configuration after the
// other, in this process: primary and backup on loopback TCP, a disk-lease
// witness in a temporary directory, the guest's disk in memory. The guest
// is the software machine's (a software machine with an instruction counter); the
// unprotected run is the same machine driven alone (sim.CheckpointGuest
// never paused), the floor every ratio is taken against.

func init() { register(newBenchCmd) }

// benchWorkloads are the guests and what each runs, in table order.
var benchWorkloads = []benchWorkload{
	{guest: "tick", about: "timer every 200µs, 5,000 walk steps per tick over 16 pages: never idle",
		params: []sim.Param{{Name: "period_ns", Value: 200_000}, {Name: "work", Value: 5000}, {Name: "every", Value: 5}}},
	{guest: "kv", about: fmt.Sprintf("a client keeps %d INCR requests outstanding", benchWindow)},
}

type benchWorkload struct {
	guest  string
	about  string
	params []sim.Param
}

const (
	benchPages       = 256 // 1 MiB of guest RAM
	benchWindow      = 8   // kv requests outstanding (the guest's receive slots)
	benchMinDuration = 100 * time.Millisecond
	benchReadyWait   = 20 * time.Second // bounds a configuration that never gets going
	benchProcs       = 4                // see benchRun
)

var (
	benchIncr  = sim.KVRequest("INCR", "k")
	benchProbe = sim.KVRequest("GET", "probe") // answered NOTFOUND: not a load reply
	benchQuiet = slog.New(slog.DiscardHandler)
)

type benchFlags struct {
	guest, epochs, machine string
	duration               time.Duration
}

// benchPlan is a checked bench command line.
type benchPlan struct {
	workloads []benchWorkload
	duration  time.Duration
	configs   []benchConfig
}

func (f *benchFlags) plan() (benchPlan, error) {
	p := benchPlan{duration: f.duration}
	for _, w := range benchWorkloads {
		if f.guest == w.guest || f.guest == "all" {
			p.workloads = append(p.workloads, w)
		}
	}
	if len(p.workloads) == 0 {
		return p, fmt.Errorf("--guest %q: the benchmarks run tick, kv or all", f.guest)
	}
	if f.duration < benchMinDuration {
		return p, fmt.Errorf("--duration %v: must be at least %v", f.duration, benchMinDuration)
	}
	epochs, err := parseEpochs(f.epochs)
	if err != nil {
		return p, err
	}
	p.configs = []benchConfig{{mode: "unprotected"}, {mode: "replay"}}
	for _, e := range epochs {
		p.configs = append(p.configs, benchConfig{mode: "checkpoint", epoch: e})
	}
	p.configs = append(p.configs, benchConfig{mode: "unprotected", again: true})
	switch f.machine {
	case "sim":
		return p, nil
	case "kvm":
		return p, benchKVM()
	}
	return p, fmt.Errorf("--machine %q: want sim or kvm", f.machine)
}

// parseEpochs parses a comma-separated list of checkpoint epochs.
func parseEpochs(s string) ([]time.Duration, error) {
	var epochs []time.Duration
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		e, err := time.ParseDuration(item)
		if err != nil {
			return nil, fmt.Errorf("--epochs %q: %w", s, err)
		}
		if e <= 0 {
			return nil, fmt.Errorf("--epochs %q: epoch %v must be positive", s, e)
		}
		epochs = append(epochs, e)
	}
	if len(epochs) == 0 {
		return nil, fmt.Errorf("--epochs %q: no epoch given (e.g. 5ms,25ms,100ms)", s)
	}
	return epochs, nil
}

// benchKVM is --machine kvm: refused, saying why.
func benchKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("--machine kvm: KVM benchmarks need /dev/kvm, which cannot be opened here (%v); --machine sim runs the comparison on the software machine", err)
	}
	f.Close()
	return errors.New("--machine kvm is not built yet: a KVM guest has no instruction counter (no PMU) and its kv load would come through virtio-net; --machine sim runs the comparison on the software machine")
}

func newBenchCmd() *cobra.Command {
	var f benchFlags
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Compare unprotected, replay and checkpoint modes on one guest and load",
		Long: `Run each guest unprotected, under replay mode and under checkpoint mode at
each epoch, then unprotected again, one configuration after the other, in this
process: primary and backup on loopback TCP, a disk-lease witness in a
temporary directory, the guest's disk in memory. Each configuration is
measured for --duration once its backup is in sync. The table compares:

  guest Minstr/s    instructions the guest executed per second
  slowdown          the unprotected rate (mean of both runs) over this one
  backup Minstr/s   replay: instructions the backup replayed per second; below
                    the primary's, it falls behind (the log queue absorbs it
                    for a while, then the primary waits)
  wire MB/s         bytes from primary to backup per second; bytes/instr per
                    guest instruction
  req/s             kv: replies per second
  output p50        kv: request to reply; tick: frame emitted to released
  landings/s        replay: interrupts delivered at a kick, by signature;
  visits/landing    the backup's stops at a landing's RIP before it matched
  pause p50         checkpoint: the guest's pause per epoch

The machine is vmm/sim, the software machine replay mode is tested on. All
configurations share this host's cores, the backup's included. Progress goes
to stderr, the table to stdout.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := f.plan()
			if err != nil {
				return err
			}
			return runBench(cmd.Context(), p, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVar(&f.guest, "guest", "all", "tick, kv or all")
	cmd.Flags().DurationVar(&f.duration, "duration", 2*time.Second, "measured time of each configuration")
	cmd.Flags().StringVar(&f.epochs, "epochs", "5ms,25ms,100ms", "checkpoint epochs to run, comma-separated")
	cmd.Flags().StringVar(&f.machine, "machine", "sim", "sim (vmm/sim) or kvm")
	return cmd
}

// runBench runs the plan and prints a table per guest on out.
func runBench(ctx context.Context, p benchPlan, out, progress io.Writer) error {
	if ctx == nil {
		ctx = context.Background()
	}
	for i, w := range p.workloads {
		var results []*benchResult
		for _, c := range p.configs {
			fmt.Fprintf(progress, "ftckpt bench: %s, %v for %v ...\n", w.guest, c, p.duration)
			r, err := benchRun(ctx, w, c, p.duration)
			if err != nil {
				return fmt.Errorf("%s, %v: %w", w.guest, c, err)
			}
			fmt.Fprintf(progress, "ftckpt bench: %s, %v: %s Minstr/s\n", w.guest, c, benchFig(r.instrPerSec()/1e6))
			results = append(results, r)
		}
		if i > 0 {
			fmt.Fprintln(out)
		}
		fmt.Fprintf(out, "guest %s: %s; %v per configuration\n", w.guest, w.about, p.duration)
		printBench(out, w, results)
	}
	return nil
}

// printBench prints one guest's table.
func printBench(out io.Writer, w benchWorkload, results []*benchResult) {
	floor := benchFloor(results)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "configuration\tguest Minstr/s\tslowdown\tbackup Minstr/s\twire MB/s\tbytes/instr\treq/s\toutput p50\tlandings/s\tvisits/landing\tpause p50\t")
	dash := func(ok bool, s string) string {
		if !ok {
			return "-"
		}
		return s
	}
	for _, r := range results {
		replicated, rp, ck := r.config.mode != "unprotected", r.config.mode == "replay", r.config.mode == "checkpoint"
		fmt.Fprintf(tw, "%v\t%s\t%sx\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.config,
			benchFig(r.instrPerSec()/1e6), benchRatio(floor/max(r.instrPerSec(), 1e-9)),
			dash(rp, benchFig(r.backupInstrPerSec()/1e6)),
			dash(replicated, benchFig(r.wirePerSec()/1e6)),
			dash(replicated, benchFig(r.bytesPerInstr())),
			dash(w.guest == "kv", benchFig(r.repliesPerSec())),
			dash(len(r.latency) > 0, benchRound(r.latencyP50())),
			dash(rp, benchFig(r.landingsPerSec())),
			dash(rp && r.landings > 0, benchFig(r.visitsPerLanding())),
			dash(ck && len(r.pauses) > 0, benchRound(benchP50(r.pauses))))
	}
	tw.Flush()
}

// benchRatio shows a ratio with two decimals, or fewer once large.
func benchRatio(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// benchFig shows v with three significant figures or more.
func benchFig(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	case v == 0:
		return "0"
	}
	return fmt.Sprintf("%.3g", v)
}

func benchRound(d time.Duration) string {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// benchConfig is one way of running the guest.
type benchConfig struct {
	mode  string // unprotected, replay or checkpoint
	epoch time.Duration
	// again marks the unprotected run after the others: the floor is the
	// mean of the two, and their difference shows how steady the host was.
	again bool
}

func (c benchConfig) String() string {
	switch {
	case c.mode == "checkpoint":
		return "checkpoint " + c.epoch.String()
	case c.again:
		return c.mode + ", again"
	}
	return c.mode
}

// benchResult is one configuration measured over its window.
type benchResult struct {
	config  benchConfig
	secs    float64
	instr   uint64          // guest instructions in the window
	wire    uint64          // bytes from primary to backup in the window
	replies uint64          // kv replies in the window
	latency []time.Duration // outputs released in the window
	pauses  []time.Duration // checkpoint: pauses begun in the window
	// pauseWork is the part of each pause after the guest stood still;
	// dirtyPerPause the mean count of dirty pages the pauses took.
	pauseWork     []time.Duration
	dirtyPerPause float64

	// Replay. backupInstr is the instructions the backup replayed in the
	// window: where it is below instr the backup falls behind, which the
	// log queue (16 MiB) absorbs for a while; sustained, the primary would
	// run at the backup's pace. landingsWindow counts the landings in the
	// window; landings and visits (the backup's stops at a landing's RIP)
	// are over the whole run, the backup having replayed all of it.
	backupInstr, landingsWindow, landings, visits uint64
}

func (r *benchResult) instrPerSec() float64       { return float64(r.instr) / r.secs }
func (r *benchResult) backupInstrPerSec() float64 { return float64(r.backupInstr) / r.secs }
func (r *benchResult) wirePerSec() float64        { return float64(r.wire) / r.secs }
func (r *benchResult) repliesPerSec() float64     { return float64(r.replies) / r.secs }
func (r *benchResult) landingsPerSec() float64    { return float64(r.landingsWindow) / r.secs }
func (r *benchResult) latencyP50() time.Duration  { return benchP50(r.latency) }
func (r *benchResult) bytesPerInstr() float64     { return float64(r.wire) / max(float64(r.instr), 1) }
func (r *benchResult) visitsPerLanding() float64 {
	return float64(r.visits) / max(float64(r.landings), 1)
}

// benchFloor is the mean instruction rate of the unprotected runs.
func benchFloor(results []*benchResult) float64 {
	sum, n := 0.0, 0
	for _, r := range results {
		if r.config.mode == "unprotected" {
			sum += r.instrPerSec()
			n++
		}
	}
	return sum / float64(max(n, 1))
}

func benchP50(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchRun runs w under c and measures it for d once its backup is in sync.
//
// It runs with at least benchProcs Ps. With as many Ps as cores (two
// here), a busy primary and a busy backup would hold both, and the
// goroutines carrying the log, checkpoints and acks between them would run
// only when Go preempts one, every 10 ms or so: an ack path tens of
// milliseconds long that two hosts would not have. With more Ps than cores
// the kernel shares the cores among the threads, finely.
func benchRun(ctx context.Context, w benchWorkload, c benchConfig, d time.Duration) (*benchResult, error) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(benchProcs, runtime.GOMAXPROCS(0))))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client := &benchClient{guest: w.guest}
	var s *benchSetup
	var err error
	switch c.mode {
	case "unprotected":
		s, err = benchUnprotected(w, client)
	case "replay":
		s, err = benchReplay(ctx, w, client)
	default:
		s, err = benchCheckpoint(ctx, w, c.epoch, client)
	}
	if err != nil {
		return nil, err
	}
	r, err := s.measure(ctx, w, client, d)
	if serr := s.stop(); err == nil {
		err = serr
	}
	if err == nil {
		err = client.failure()
	}
	if err != nil {
		return nil, err
	}
	r.config = c
	if s.landings != nil {
		r.landings, r.visits = s.landings(), s.visits()
	}
	return r, nil
}

// benchSetup is a running configuration as the measurement sees it.
type benchSetup struct {
	instructions func() uint64
	receive      func([]byte) // a frame from the client
	ready        func() bool  // the backup is in sync (or there is none)
	done         <-chan error // the primary's end, if it ends early
	stop         func() error // ends the run; then the statistics are final
	wire         *atomic.Uint64
	pauses       *benchPauses
	// Replay: landings recorded, the backup's breakpoint visits and
	// instructions replayed.
	landings, visits, backupInstr func() uint64
}

// measure waits for the configuration to be ready and the kv load to run,
// then samples it over d.
func (s *benchSetup) measure(ctx context.Context, w benchWorkload, client *benchClient, d time.Duration) (*benchResult, error) {
	deadline := time.Now().Add(benchReadyWait)
	for !s.ready() {
		if err := s.sleep(ctx, time.Millisecond); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the backup was not in sync after %v", benchReadyWait)
		}
	}
	if w.guest == "kv" {
		for !client.probed() {
			s.receive(benchProbe)
			if err := s.sleep(ctx, 5*time.Millisecond); err != nil {
				return nil, err
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("the kv guest did not answer in %v", benchReadyWait)
			}
		}
		client.startLoad(s.receive)
	}
	type sample struct {
		at                               time.Time
		instr, wire, rep, landed, binstr uint64
	}
	take := func() sample {
		x := sample{at: time.Now(), instr: s.instructions(), rep: client.repliesSoFar()}
		if s.wire != nil {
			x.wire = s.wire.Load()
		}
		if s.landings != nil {
			x.landed, x.binstr = s.landings(), s.backupInstr()
		}
		return x
	}
	a := take()
	err := s.sleep(ctx, d)
	b := take()
	client.stopLoad()
	if err != nil {
		return nil, err
	}
	r := &benchResult{secs: b.at.Sub(a.at).Seconds(), instr: b.instr - a.instr, wire: b.wire - a.wire,
		replies: b.rep - a.rep, landingsWindow: b.landed - a.landed, backupInstr: b.binstr - a.binstr,
		latency: client.latencies(a.at, b.at)}
	if s.pauses != nil {
		r.pauses, r.pauseWork, r.dirtyPerPause = s.pauses.between(a.at, b.at)
	}
	return r, nil
}

// sleep waits d, failing if ctx ends or the primary stops first.
func (s *benchSetup) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case err := <-s.done:
		return fmt.Errorf("the primary stopped: %v", err)
	}
}

// benchUnprotected is the guest alone, its outputs straight to the client.
func benchUnprotected(w benchWorkload, client *benchClient) (*benchSetup, error) {
	g, err := sim.NewCheckpointGuest(w.guest, benchPages, benchDevices{net: client, disk: newBenchDisk()}, w.params...)
	if err != nil {
		return nil, err
	}
	if err := g.Start(); err != nil {
		return nil, err
	}
	zero := g.ClockZero()
	client.setZero(func() time.Time { return zero })
	done := make(chan error, 1)
	go func() { <-g.Stopped(); done <- benchStopped(g) }()
	return &benchSetup{
		instructions: g.Instructions,
		receive:      func(f []byte) { g.Receive(f) },
		ready:        func() bool { return true },
		done:         done,
		stop:         func() error { g.Close(); return g.Err() },
	}, nil
}

// benchStopped says why a guest stopped.
func benchStopped(g *sim.CheckpointGuest) error {
	if err := g.Err(); err != nil {
		return err
	}
	return errors.New("the guest powered off")
}

// benchPair is what both replicated configurations share: a lease
// witness, the primary's fence (generation 1 won) and the backup's, and a
// loopback connection whose primary side counts the bytes it writes.
type benchPair struct {
	dir    string
	arb    witness.Arbiter
	pf, bf *witness.Fence
	wire   atomic.Uint64
	disk   *benchDisk
}

func newBenchPair(ctx context.Context) (*benchPair, error) {
	dir, err := os.MkdirTemp("", "ftckpt-bench-")
	if err != nil {
		return nil, err
	}
	arb, err := witness.Open("disk:" + filepath.Join(dir, "lease"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p := &benchPair{dir: dir, arb: arb, pf: witness.NewFence(arb, "primary"), bf: witness.NewFence(arb, "backup"), disk: newBenchDisk()}
	if _, err := p.pf.Acquire(ctx, 1); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

func (p *benchPair) close() {
	p.arb.Close()
	os.RemoveAll(p.dir)
}

// connect accepts one connection for the backup (serve runs on it) and
// returns the primary's end.
func (p *benchPair) connect(serve func(net.Conn)) (net.Conn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	bconn := <-accepted
	if bconn == nil {
		conn.Close()
		return nil, errors.New("accepting the primary's connection failed")
	}
	go serve(bconn)
	return benchConn{Conn: conn, tcp: conn.(*net.TCPConn), sent: &p.wire}, nil
}

// benchReplay is a replay-mode primary and backup.
func benchReplay(ctx context.Context, w benchWorkload, client *benchClient) (*benchSetup, error) {
	pair, err := newBenchPair(ctx)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			pair.close()
		}
	}()
	cfg := replay.DefaultConfig()
	pplug := &replay.Plug{}
	clock := &benchClockEnv{Env: pplug}
	pm, err := sim.New(w.guest, benchPages, clock, w.params...)
	if err != nil {
		return nil, err
	}
	m := &benchCountingMachine{Machine: pm}
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: pair.pf, Net: client, Disk: pair.disk, Clock: outbuf.SystemClock{}})
	if err != nil {
		return nil, err
	}
	primary, err := replay.NewPrimary(cfg, m, pplug, out, pair.pf, 1, benchQuiet)
	if err != nil {
		return nil, err
	}
	bplug := &replay.Plug{}
	bsim, err := sim.New(w.guest, benchPages, bplug, w.params...)
	if err != nil {
		return nil, err
	}
	bm := &benchCountingMachine{Machine: bsim}
	makeOut := func(gen uint64) (*outbuf.Buffer, error) {
		return outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: gen, Fence: pair.bf, Net: benchNowhere{}, Disk: pair.disk, Clock: outbuf.SystemClock{}})
	}
	backup, err := replay.NewBackup(cfg, bm, bplug, pair.bf, makeOut, benchQuiet)
	if err != nil {
		return nil, err
	}
	bctx, cancelB := context.WithCancel(ctx)
	bDone := make(chan error, 1)
	conn, err := pair.connect(func(c net.Conn) {
		_, err := backup.Follow(bctx, c)
		bDone <- err
	})
	if err != nil {
		cancelB()
		return nil, err
	}
	client.setZero(clock.zero)
	pctx, cancelP := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- primary.Run(pctx, conn) }()
	ok = true
	var runErr error
	stop := func() error {
		defer pair.close()
		defer cancelB()
		// A graceful stop: the primary ships what it logged and closes its
		// side; the backup replays all of it (so that its statistics cover
		// the run) and fails over.
		cancelP()
		if err := <-done; !errors.Is(err, context.Canceled) {
			runErr = fmt.Errorf("the primary's Run: %v", err)
		}
		select {
		case err := <-bDone:
			if err != nil && runErr == nil {
				runErr = fmt.Errorf("the backup: %w", err)
			}
		case <-time.After(benchReadyWait):
			return errors.New("the backup did not finish replaying the log")
		}
		return runErr
	}
	return &benchSetup{
		instructions: m.instructions.Load,
		receive:      primary.Receive,
		ready:        func() bool { return backup.Stats.Applied.Load() > 0 },
		done:         done,
		stop:         stop,
		wire:         &pair.wire,
		landings:     primary.Stats.Landings.Load,
		visits:       backup.Stats.BreakpointHits.Load,
		backupInstr:  bm.instructions.Load,
	}, nil
}

// benchCheckpoint is a checkpoint-mode primary and backup at epoch.
func benchCheckpoint(ctx context.Context, w benchWorkload, epoch time.Duration, client *benchClient) (*benchSetup, error) {
	pair, err := newBenchPair(ctx)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			pair.close()
		}
	}()
	cfg := ckmode.DefaultConfig()
	cfg.Epoch = epoch
	var primary *ckmode.Primary
	pos := func() uint64 { return primary.Position() }
	held := ckmode.NewHeldDisk(pair.disk, pos)
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: pair.pf, Net: client, Disk: held.Sink(), Clock: outbuf.SystemClock{}})
	if err != nil {
		return nil, err
	}
	held.Attach(out)
	g, err := sim.NewCheckpointGuest(w.guest, benchPages, benchHeldDevices{out: out, disk: held, pos: pos}, w.params...)
	if err != nil {
		return nil, err
	}
	held.SetPoll(g.Poke)
	timed := &benchTimedGuest{CheckpointGuest: g, pauses: &benchPauses{}}
	if primary, err = ckmode.NewPrimary(cfg, timed, out, pair.pf, 1, benchQuiet); err != nil {
		return nil, err
	}
	primary.SetDisk(held)
	bg, err := sim.NewCheckpointGuest(w.guest, benchPages, benchDevices{net: benchNowhere{}, disk: pair.disk}, w.params...)
	if err != nil {
		return nil, err
	}
	backup, err := ckmode.NewBackup(cfg, bg, pair.bf, benchQuiet)
	if err != nil {
		return nil, err
	}
	backup.SetDisk(pair.disk)
	bctx, cancelB := context.WithCancel(ctx)
	bDone := make(chan error, 1)
	conn, err := pair.connect(func(c net.Conn) { bDone <- backup.Receive(bctx, c) })
	if err != nil {
		cancelB()
		return nil, err
	}
	if err := g.Start(); err != nil {
		cancelB()
		conn.Close()
		return nil, err
	}
	zero := g.ClockZero()
	client.setZero(func() time.Time { return zero })
	pctx, cancelP := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- primary.Run(pctx, conn) }()
	ok = true
	stop := func() error {
		defer pair.close()
		cancelP()
		err := <-done
		g.Close()
		cancelB()
		<-bDone
		if !errors.Is(err, context.Canceled) {
			return fmt.Errorf("the primary's Run: %v", err)
		}
		return g.Err()
	}
	return &benchSetup{
		instructions: g.Instructions,
		receive:      func(f []byte) { g.Receive(f) },
		ready:        func() bool { return backup.Status().State == format.StateCommitted },
		done:         done,
		stop:         stop,
		wire:         &pair.wire,
		pauses:       timed.pauses,
	}, nil
}

// benchClient is the guest's network peer: the NetSink of released frames
// and, for kv, a closed-loop load of benchWindow INCR requests. A tick
// frame's latency is from its clock reading (guest time, mapped to host
// time through zero) to its release; a kv reply's from its request's send
// (replies come in request order). Safe for concurrent use.
type benchClient struct {
	guest string

	mu      sync.Mutex
	zero    func() time.Time // the host time of guest time 0
	send    func([]byte)     // kv: set while the load runs
	sent    []time.Time      // kv: send times of the INCRs outstanding
	probe   bool             // kv: the guest answered a probe
	replies uint64
	lat     []benchLatency
	err     error
}

type benchLatency struct {
	at time.Time
	d  time.Duration
}

func (c *benchClient) setZero(zero func() time.Time) {
	c.mu.Lock()
	c.zero = zero
	c.mu.Unlock()
}

// SendFrame implements outbuf.NetSink: a frame reaches the client.
func (c *benchClient) SendFrame(f []byte) error {
	now := time.Now()
	var next func([]byte)
	c.mu.Lock()
	switch c.guest {
	case "tick":
		tf, err := sim.ParseTickFrame(f)
		if err != nil {
			c.failLocked(err)
		} else if c.zero != nil {
			c.lat = append(c.lat, benchLatency{now, now.Sub(c.zero()) - time.Duration(tf.Clock)})
		}
	case "kv":
		r, err := sim.ParseKVReply(f)
		switch {
		case err != nil:
			c.failLocked(err)
		case r.Status == "NOTFOUND":
			c.probe = true
		case r.Status == "VALUE" && len(c.sent) > 0:
			c.lat = append(c.lat, benchLatency{now, now.Sub(c.sent[0])})
			c.sent = c.sent[1:]
			c.replies++
			if c.send != nil {
				c.sent = append(c.sent, now)
				next = c.send
			}
		default:
			c.failLocked(fmt.Errorf("kv reply %q to INCR", f))
		}
	}
	c.mu.Unlock()
	if next != nil {
		next(benchIncr)
	}
	return nil
}

func (c *benchClient) failLocked(err error) {
	if c.err == nil {
		c.err = err
	}
}

func (c *benchClient) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *benchClient) probed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.probe
}

// startLoad sends benchWindow INCRs through send, and one more for each
// reply until stopLoad.
func (c *benchClient) startLoad(send func([]byte)) {
	c.mu.Lock()
	c.send = send
	now := time.Now()
	for range benchWindow {
		c.sent = append(c.sent, now)
	}
	c.mu.Unlock()
	for range benchWindow {
		send(benchIncr)
	}
}

func (c *benchClient) stopLoad() {
	c.mu.Lock()
	c.send = nil
	c.mu.Unlock()
}

func (c *benchClient) repliesSoFar() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replies
}

// latencies returns those of the outputs released in [from, to].
func (c *benchClient) latencies(from, to time.Time) []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return durationsBetween(c.lat, from, to)
}

// durationsBetween returns the durations of the samples taken in [from, to].
func durationsBetween(samples []benchLatency, from, to time.Time) []time.Duration {
	var ds []time.Duration
	for _, l := range samples {
		if !l.at.Before(from) && !l.at.After(to) {
			ds = append(ds, l.d)
		}
	}
	return ds
}

// benchClockEnv is the replay primary's Env as its machine sees it; it
// notes where guest time 0 lies in host time (the primary's clock is host
// time from a base).
type benchClockEnv struct {
	machine.Env

	zeroNs atomic.Int64
}

func (e *benchClockEnv) Now() uint64 {
	t := e.Env.Now()
	e.zeroNs.Store(time.Now().UnixNano() - int64(t))
	return t
}

func (e *benchClockEnv) zero() time.Time { return time.Unix(0, e.zeroNs.Load()) }

// benchCountingMachine publishes its instruction count at every stop.
type benchCountingMachine struct {
	*sim.Machine
	instructions atomic.Uint64
}

func (m *benchCountingMachine) Run() (machine.Exit, error) {
	e, err := m.Machine.Run()
	m.instructions.Store(m.Machine.Instructions())
	return e, err
}

func (m *benchCountingMachine) RunTo(rip uint64) (machine.Exit, error) {
	e, err := m.Machine.RunTo(rip)
	m.instructions.Store(m.Machine.Instructions())
	return e, err
}

// benchTimedGuest times the primary's pauses, Pause to Resume (both are
// called by the primary's epoch loop), and within them the work done once
// the guest stood still (from Pause's return); it counts the pages each
// harvest found dirty.
type benchTimedGuest struct {
	*sim.CheckpointGuest
	pausedAt, stoodAt time.Time
	dirty             int
	pauses            *benchPauses
}

func (g *benchTimedGuest) Pause() error {
	g.pausedAt, g.dirty = time.Now(), 0
	err := g.CheckpointGuest.Pause()
	g.stoodAt = time.Now()
	return err
}

func (g *benchTimedGuest) Harvest(dst *machine.Bitmap) error {
	err := g.CheckpointGuest.Harvest(dst)
	g.dirty = dst.Count()
	return err
}

func (g *benchTimedGuest) Resume() error {
	work := time.Since(g.stoodAt)
	err := g.CheckpointGuest.Resume()
	g.pauses.add(g.pausedAt, time.Since(g.pausedAt), work, g.dirty)
	return err
}

// benchPauses are pause durations by start, with the work done in each
// once the guest stood still and the pages each found dirty. Safe for
// concurrent use.
type benchPauses struct {
	mu    sync.Mutex
	l     []benchLatency
	work  []benchLatency // by pause, as l
	dirty []int          // by pause, as l
}

func (p *benchPauses) add(at time.Time, d, work time.Duration, dirty int) {
	p.mu.Lock()
	p.l = append(p.l, benchLatency{at, d})
	p.work = append(p.work, benchLatency{at, work})
	p.dirty = append(p.dirty, dirty)
	p.mu.Unlock()
}

// between returns the durations of the pauses begun in [from, to], the
// work in each, and the mean count of pages they found dirty.
func (p *benchPauses) between(from, to time.Time) (pauses, work []time.Duration, dirty float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	total, n := 0, 0
	for i, x := range p.l {
		if !x.at.Before(from) && !x.at.After(to) {
			total += p.dirty[i]
			n++
		}
	}
	return durationsBetween(p.l, from, to), durationsBetween(p.work, from, to), float64(total) / float64(max(n, 1))
}

// benchDevices connect a guest straight to the client and the disk: an
// unprotected machine's (or a backup's that never goes live).
type benchDevices struct {
	net  outbuf.NetSink
	disk *benchDisk
}

func (d benchDevices) SendFrame(f []byte) error { return d.net.SendFrame(f) }
func (d benchDevices) ReadDisk(p []byte, off int64) error {
	_, err := d.disk.ReadAt(p, off)
	return err
}
func (d benchDevices) WriteDisk(p []byte, off int64) error {
	_, err := d.disk.WriteAt(p, off)
	return err
}
func (benchDevices) Console([]byte) {}

// benchHeldDevices are a checkpoint-mode primary's: outputs held at the
// primary's position, refused (vmm.ErrOutputFull) rather than waited for
// when the buffer is full, as a device's hooks do.
type benchHeldDevices struct {
	out  *outbuf.Buffer
	disk *ckmode.HeldDisk
	pos  func() uint64
}

func (h benchHeldDevices) SendFrame(f []byte) error {
	return ckmode.HeldNet{Out: h.out, Pos: h.pos}.SendFrame(f)
}

func (h benchHeldDevices) ReadDisk(p []byte, off int64) error {
	_, err := h.disk.ReadAt(p, off)
	return err
}

func (h benchHeldDevices) WriteDisk(p []byte, off int64) error {
	_, err := h.disk.WriteAt(p, off)
	return err
}

func (benchHeldDevices) Console([]byte) {}

// benchNowhere is the NIC of a backup that never goes live in a benchmark.
type benchNowhere struct{}

func (benchNowhere) SendFrame([]byte) error { return nil }

// benchConn counts the bytes the primary writes. It embeds net.Conn, not
// *net.TCPConn, so that every write goes through Write (net.Buffers would
// use the TCPConn's writev).
type benchConn struct {
	net.Conn
	tcp  *net.TCPConn
	sent *atomic.Uint64
}

func (c benchConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent.Add(uint64(n))
	return n, err
}

// CloseWrite lets the replay primary end its stream gracefully.
func (c benchConn) CloseWrite() error { return c.tcp.CloseWrite() }

// benchDisk is the guest's disk, in memory (the benchmarks compare the
// modes, not this host's storage). Safe for concurrent use.
type benchDisk struct {
	mu sync.Mutex
	b  []byte
}

func newBenchDisk() *benchDisk { return &benchDisk{b: make([]byte, 1<<20)} }

func (d *benchDisk) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.b)) {
		return 0, fmt.Errorf("disk read of %d bytes at %d: beyond the %d-byte disk", len(p), off, len(d.b))
	}
	return copy(p, d.b[off:]), nil
}

func (d *benchDisk) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.b)) {
		return 0, fmt.Errorf("disk write of %d bytes at %d: beyond the %d-byte disk", len(p), off, len(d.b))
	}
	return copy(d.b[off:], p), nil
}

func (d *benchDisk) Flush() error { return nil }
func (d *benchDisk) Size() int64  { return int64(len(d.b)) }
