package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/guests"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// readyWait bounds a configuration that never gets going.
const readyWait = 30 * time.Second

// Result is one configuration measured over its window.
type Result struct {
	Config Config
	Secs   float64
	// Progress is the guest's work in the window, in Unit: instructions on
	// the software machine, else kv replies or pages memtouch dirtied.
	Progress uint64
	Unit     string
	// Logged and Replayed are replay's log entries the primary appended and
	// the backup replayed in the window: the backup's pace (below 100% it
	// falls behind, which its log queue absorbs for a while).
	Logged, Replayed uint64
	// Wire is the bytes the primary shipped to its backup in the window.
	Wire uint64
	// Replies and RoundTrips are the kv load's.
	Replies    uint64
	RoundTrips []time.Duration
	// OutputP50 is the median time an output was held, over the run.
	OutputP50 time.Duration
	// Landings (in the window) and Visits (over the run, the backup's
	// stops at a landing's RIP) are replay mode's.
	Landings, Visits, AllLandings uint64
	// Pauses are checkpoint mode's pauses begun in the window.
	Pauses []ckmode.Pause
	// Lapse says how the backup's protection lapsed in the window ("" if
	// it did not): the figures then mix the mode with running alone or
	// resynchronising. Said is what the nodes logged about it.
	Lapse string
	Said  []string
}

// Rate is Progress per second.
func (r *Result) Rate() float64 { return float64(r.Progress) / r.Secs }

// Run measures every configuration of every workload of p, printing
// progress lines on progress, and returns the results by workload.
func Run(ctx context.Context, p Plan, progress io.Writer) ([][]*Result, error) {
	// More Ps than cores: with as many as cores (two here), a busy primary
	// and a busy backup would hold both, and the goroutines carrying the
	// log, checkpoints and acks between them would run only when Go
	// preempts one, every 10 ms or so: an ack path two hosts would not
	// have. With more, the kernel shares the cores among the threads.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(4, runtime.GOMAXPROCS(0))))
	var all [][]*Result
	for _, w := range p.Workloads {
		var results []*Result
		for _, c := range p.Configs {
			if c.Mode == "replay" && w.NoReplay != "" {
				fmt.Fprintf(progress, "ftckpt bench: %s, %v: left out: %s\n", w.Guest, c, w.NoReplay)
				continue
			}
			fmt.Fprintf(progress, "ftckpt bench: %s, %v for %v ...\n", w.Guest, c, p.Duration)
			r, err := runConfig(ctx, p, w, c)
			if errors.Is(err, errNeverInSync) {
				// Once, as a lapse: a host too slow for the failure
				// timeout during the full sync (the emulated machine) may
				// lose its backup then.
				fmt.Fprintf(progress, "ftckpt bench: %s, %v: %v; starting the pair again\n", w.Guest, c, err)
				r, err = runConfig(ctx, p, w, c)
			}
			if err == nil && r.Lapse != "" {
				// Once: a host too busy for the mode lapses again.
				fmt.Fprintf(progress, "ftckpt bench: %s, %v: %s; measuring it again\n%s", w.Guest, c, r.Lapse, indent(r.Said))
				r, err = runConfig(ctx, p, w, c)
			}
			if err != nil {
				return nil, fmt.Errorf("%s, %v: %w", w.Guest, c, err)
			}
			if r.Lapse != "" {
				fmt.Fprintf(progress, "ftckpt bench: %s, %v: %s again; its row is marked\n%s", w.Guest, c, r.Lapse, indent(r.Said))
			}
			fmt.Fprintf(progress, "ftckpt bench: %s, %v: %s %s/s\n", w.Guest, c, fig(r.Rate()), r.Unit)
			results = append(results, r)
		}
		all = append(all, results)
	}
	return all, nil
}

// runConfig runs w under c: a node alone, or a backup node and a primary
// node connected on loopback; it measures the window once the backup is in
// sync and the load runs, then stops both.
func runConfig(ctx context.Context, p Plan, w Workload, c Config) (*Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir, err := os.MkdirTemp("", "ftckpt-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	o, con, err := options(p, w, c, dir)
	if err != nil {
		return nil, err
	}
	ev := &events{}
	o.Log = ev.logger("primary")
	var primary, backup *node.Node
	if c.Mode == "unprotected" {
		o.Role = node.RoleAlone
		if primary, err = node.Start(ctx, o); err != nil {
			return nil, err
		}
	} else {
		b := o
		b.Role, b.Listen, b.Console, b.Log = node.RoleBackup, "127.0.0.1:0", io.Discard, ev.logger("backup")
		addr := make(chan string, 1)
		b.Ready = func(a string) { addr <- a }
		if backup, err = node.Start(ctx, b); err != nil {
			return nil, err
		}
		select {
		case o.Peer = <-addr:
		case <-backup.Done():
			return nil, fmt.Errorf("the backup ended: %v", backup.Wait())
		}
		o.Role = node.RolePrimary
		if primary, err = node.Start(ctx, o); err != nil {
			cancel()
			backup.Wait()
			return nil, err
		}
	}
	r, err := measure(ctx, p, w, c, primary, backup, con, o.Net, ev)
	cancel()
	for _, n := range []*node.Node{primary, backup} {
		if n == nil || n == backup && r != nil && r.Lapse != "" {
			continue // a lapse says why the backup stopped
		}
		if werr := n.Wait(); err == nil && werr != nil && !errors.Is(werr, context.Canceled) {
			err = fmt.Errorf("a node stopped: %w", werr)
		}
	}
	if err != nil {
		return nil, err
	}
	r.Config = c
	return r, nil
}

// options are the nodes' options for w under c, their files in dir: the
// primary's; the backup differs by role.
func options(p Plan, w Workload, c Config, dir string) (node.Options, *guests.MemtouchConsole, error) {
	o := node.DefaultOptions()
	o.Machine, o.Guest, o.Params, o.VCPUs = p.Machine, w.Guest, w.Params, 1
	o.Mode = node.ModeCheckpoint
	if c.Mode == "replay" {
		o.Mode = node.ModeReplay
	} else if p.Machine == node.MachineKVM {
		o.VCPUs = p.VCPUs
	}
	o.Memory = 16 << 20
	if p.Machine == node.MachineSim {
		o.Memory = 1 << 20
	}
	if w.Memory != 0 {
		o.Memory = w.Memory
	}
	o.Net, o.Disk = node.DefaultDevices(p.Machine, w.Guest)
	if o.Net != "none" {
		port, err := freeUDPPort()
		if err != nil {
			return o, nil, err
		}
		o.Net = "udp:" + port
	}
	if o.Disk != "" {
		o.Disk, o.DiskSize = filepath.Join(dir, "disk.img"), 1<<20
	}
	o.Arbiter = "disk:" + filepath.Join(dir, "lease")
	o.Checkpoint.Epoch = max(c.Epoch, time.Millisecond)
	o.Checkpoint.CopyAfterResume = c.Copy
	con := &guests.MemtouchConsole{}
	o.Console, o.StatusEvery = con, 0
	return o, con, nil
}

func freeUDPPort() (string, error) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// instructions is a machine that counts the instructions it executed (the
// software machine).
type instructions interface{ Instructions() uint64 }

// errNeverInSync is measure's error when the backup does not get in sync
// within readyWait.
var errNeverInSync = errors.New("the backup was not in sync")

// minEpochs is the fewest epochs a checkpoint-mode window lasts.
const minEpochs = 4

// measure waits for the configuration to be ready and the load to run,
// then samples it over p.Duration (at least minEpochs of its epochs). What
// the nodes log (ev) goes into its errors and the result's Lapse.
func measure(ctx context.Context, p Plan, w Workload, c Config, primary, backup *node.Node, con *guests.MemtouchConsole, netSpec string, ev *events) (*Result, error) {
	deadline := time.Now().Add(readyWait)
	ok, err := pollUntil(ctx, time.Millisecond, deadline, primary, backup, func() bool { return ready(primary, backup) })
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w after %v%s", errNeverInSync, readyWait, said(ev.since(0)))
	}
	if err := pastFirstEpoch(ctx, primary, backup, deadline); err != nil {
		return nil, fmt.Errorf("%w%s", err, said(ev.since(0)))
	}
	var client *kvClient
	if w.Guest == "kv" {
		var err error
		if client, err = dialKV(netSpec[len("udp:"):]); err != nil {
			return nil, err
		}
		defer client.stop()
		if err := client.probe(readyWait); err != nil {
			return nil, err
		}
		client.start()
	}
	r := &Result{Unit: unit(p.Machine, w)}
	type at struct {
		t                         time.Time
		progress, wire, landings  uint64
		replies, logged, replayed uint64
		epoch                     uint64 // a checkpoint primary's position
	}
	take := func() at {
		x := at{t: time.Now()}
		pp := primary.Parts()
		m := pp.Machine
		for {
			w, ok := m.(interface{ Unwrap() machine.Runner })
			if !ok {
				break
			}
			m = w.Unwrap() // the operator's hold (modes/node)
		}
		switch m := m.(type) {
		case instructions:
			x.progress = m.Instructions()
		default:
			if client != nil {
				x.progress = client.repliesSoFar()
			} else {
				x.progress = con.Dirtied()
			}
		}
		if client != nil {
			x.replies = client.repliesSoFar()
		}
		if backup != nil {
			if bp := backup.Parts(); bp.ReplayBackup != nil {
				x.replayed = bp.ReplayBackup.Stats.Replayed.Load()
			}
		}
		switch {
		case pp.CheckpointPrimary != nil:
			_, _, x.wire, _, _ = pp.CheckpointPrimary.Stats.Counters()
			x.epoch = pp.CheckpointPrimary.Position()
		case pp.ReplayPrimary != nil:
			x.wire = pp.ReplayPrimary.Stats.LogBytes.Load()
			x.landings = pp.ReplayPrimary.Stats.Landings.Load()
			x.logged = pp.ReplayPrimary.Stats.Entries.Load()
		}
		return x
	}
	// Progress counted in steps (memtouch's passes, kv's replies on KVM)
	// is measured from one step to the first after the window's duration:
	// a step may take longer than the window (a pass costs a VM exit per
	// page, a third of a millisecond each in an emulated machine).
	var steps func() uint64
	if p.Machine != node.MachineSim { // the software machine counts instructions
		steps = con.Dirtied
		if client != nil {
			steps = client.repliesSoFar
		}
		if err := nextStep(ctx, steps, primary, backup); err != nil {
			return nil, err
		}
	}
	a := take()
	before, logged := primary.Status(), ev.mark()
	if testHookWindow != nil {
		testHookWindow(primary, backup)
	}
	// A window holds at least minEpochs epochs: fewer measure how an
	// epoch falls in the window. A backup that stops in it (a replay
	// backup that lost its primary and the witness's contest) is a lapse,
	// not the end of the run.
	err = sleep(ctx, max(p.Duration, minEpochs*c.Epoch), primary, nil)
	if err == nil {
		err = untilEpochs(ctx, primary, a.epoch)
	}
	if err == nil && steps != nil {
		err = nextStep(ctx, steps, primary, nil)
	}
	b := take()
	if err != nil {
		return nil, err
	}
	if backup != nil {
		r.Lapse, r.Said = lapse(before, primary.Status(), backup, ev.since(logged))
	}
	r.Secs = b.t.Sub(a.t).Seconds()
	r.Progress, r.Wire = b.progress-a.progress, b.wire-a.wire
	r.Replies, r.Landings, r.AllLandings = b.replies-a.replies, b.landings-a.landings, b.landings
	r.Logged, r.Replayed = b.logged-a.logged, b.replayed-a.replayed
	if client != nil {
		r.RoundTrips = client.roundTrips(a.t, b.t)
		if err := client.stop(); err != nil {
			return nil, fmt.Errorf("the kv client: %w", err)
		}
	}
	pp := primary.Parts()
	if pp.Outputs != nil {
		r.OutputP50 = pp.Outputs.Stats().Delay.Quantile(0.5)
	}
	if pp.CheckpointPrimary != nil {
		r.Pauses = pp.CheckpointPrimary.Stats.Pauses(a.t, b.t)
	}
	if backup != nil && backup.Parts().ReplayBackup != nil {
		r.Visits = backup.Parts().ReplayBackup.Stats.BreakpointHits.Load()
	}
	return r, nil
}

// testHookWindow, if set, is called as a window begins (a test's lapse).
var testHookWindow func(primary, backup *node.Node)

// lapse says how a primary's protection lapsed between its statuses
// before and after ("" if it did not), and what the nodes logged meanwhile
// (logged) or the backup node, stopped, returned.
func lapse(before, after node.Status, backup *node.Node, logged []string) (why string, said []string) {
	resyncs := func(s node.Status) uint64 {
		switch {
		case s.Checkpoint != nil:
			return s.Checkpoint.Resyncs
		case s.Replay != nil:
			return s.Replay.Resyncs
		}
		return 0
	}
	stopped := false
	select {
	case <-backup.Done():
		stopped = true
		logged = append(logged, fmt.Sprintf("the backup node stopped: %v", backup.Wait()))
	default:
	}
	switch {
	case stopped || after.BackupsLost > before.BackupsLost:
		why = "the backup was lost in the window"
	case resyncs(after) > resyncs(before):
		why = "the backup was resynchronised in the window"
	case !after.InSync:
		why = "the backup was not in sync at the window's end"
	default:
		return "", nil
	}
	return why, last(logged)
}

// nextStep waits until steps changes.
func nextStep(ctx context.Context, steps func() uint64, primary, backup *node.Node) error {
	from := steps()
	ok, err := pollUntil(ctx, 250*time.Microsecond, time.Now().Add(readyWait), primary, backup, func() bool { return steps() != from })
	if err == nil && !ok {
		err = fmt.Errorf("the guest made no progress in %v", readyWait)
	}
	return err
}

// unit is what a workload's progress counts on a machine.
func unit(m node.Machine, w Workload) string {
	switch {
	case m == node.MachineSim:
		return "instr"
	case w.Guest == "kv":
		return "replies"
	}
	return "pages"
}

// ready says whether the configuration is running: its backup (if any)
// holds the primary's state.
func ready(primary, backup *node.Node) bool {
	if backup == nil {
		return primary.Parts().Machine != nil
	}
	bp := backup.Parts()
	switch {
	case bp.CheckpointBackup != nil:
		return bp.CheckpointBackup.Status().State == format.StateCommitted
	case bp.ReplayBackup != nil:
		return bp.ReplayBackup.Stats.Applied.Load() > 0
	}
	return false
}

// pastFirstEpoch waits, in checkpoint mode, until the backup has committed
// two epochs after the full sync: an epoch makes its page buffer while the
// guest runs unpaused, and the first epochs after the sync make the
// largest (faulting one in took 0.5 s in the emulated machine, a window
// with no checkpoint at all), a cost paid once, not the mode's. The first
// epoch, from the sync's commit to the next tick, may be short and dirty
// few pages; the second is whole. It fails at deadline.
func pastFirstEpoch(ctx context.Context, primary, backup *node.Node, deadline time.Time) error {
	if backup == nil || backup.Parts().CheckpointBackup == nil {
		return nil
	}
	b := backup.Parts().CheckpointBackup
	synced := b.Status().Epoch
	ok, err := pollUntil(ctx, time.Millisecond, deadline, primary, backup, func() bool { return b.Status().Epoch >= synced+2 })
	if err == nil && !ok {
		err = fmt.Errorf("not two epochs after the full sync within %v", readyWait)
	}
	return err
}

// untilEpochs waits, for a checkpoint primary, until it has taken
// minEpochs epochs since position from: on a machine slower than its
// epochs (the emulated one: 3 pauses in 500 ms at 5 ms epochs, none at all
// in one 500 ms window at 25 ms) a window of the plan's duration could
// hold none. It gives up when the primary runs unprotected (a lapse) or
// after readyWait, leaving the window as it is.
func untilEpochs(ctx context.Context, primary *node.Node, from uint64) error {
	p := primary.Parts().CheckpointPrimary
	if p == nil {
		return nil
	}
	_, err := pollUntil(ctx, time.Millisecond, time.Now().Add(readyWait), primary, nil, func() bool {
		return p.Position() >= from+minEpochs || !p.Protected()
	})
	return err
}

// pollUntil checks done every interval until it holds (true) or deadline
// passes (false); it fails as sleep does.
func pollUntil(ctx context.Context, every time.Duration, deadline time.Time, primary, backup *node.Node, done func() bool) (bool, error) {
	for !done() {
		if time.Now().After(deadline) {
			return false, nil
		}
		if err := sleep(ctx, every, primary, backup); err != nil {
			return false, err
		}
	}
	return true, nil
}

// sleep waits d, failing if ctx ends or a node stops first.
func sleep(ctx context.Context, d time.Duration, primary, backup *node.Node) error {
	t := time.NewTimer(d)
	defer t.Stop()
	done := func(n *node.Node) <-chan struct{} {
		if n == nil {
			return nil
		}
		return n.Done()
	}
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-done(primary):
		return fmt.Errorf("the primary stopped: %v", primary.Wait())
	case <-done(backup):
		return fmt.Errorf("the backup stopped: %v", backup.Wait())
	}
}
