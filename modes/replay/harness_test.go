package replay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// The engine's tests run the software machine (vmm/sim) where /dev/kvm
// cannot be opened: a primary and a backup in one process, on an
// in-memory link (checkpoint/linktest) the test can cut, silence or tamper
// with, a disk-lease witness and a disk file shared by both hosts, and a
// client that sees what each host's NIC emits.
//
// This harness stays beside modes/node/nodetest's pair of nodes, which
// runs the same engines as ftckpt does: these tests reach where a node
// does not let them — a scripted machine in the primary's place
// (scripted_test.go), a wrapper of each machine's Env, the primary's own
// disk and sync, a gated arbiter, backups attached to a primary by hand,
// and the engines' statistics.

const testPages = 64

func testConfig() replay.Config {
	c := replay.DefaultConfig()
	// The tests end links by closing or resetting them (killLink,
	// crashPrimary, stopPrimary), never by silence unless they say so: a
	// peer found silent here, or a heartbeat not written in time (four
	// intervals), is a loaded host's stall (two CPU-bound engines on a
	// busy machine starved both ends for over 300 ms), which made the
	// backup take over from a running primary, or the primary drop a
	// running backup, and the test fail.
	c.Heartbeat = 500 * time.Millisecond
	c.FailureTimeout = 10 * time.Second
	c.BackupQueueBytes = replay.MaxBatch
	// Kick for every due interrupt: the tests want landings (on a fast
	// host the tick guest's work may otherwise always end in an exit
	// within the default delay).
	c.LandingDelay = 0
	c.Verify = true
	return c
}

// frame is one output the client saw, and from which host.
type frame struct {
	data []byte
	host string
}

// client collects the frames the hosts' NICs emit; a crashed host's NIC
// is cut and emits nothing more.
type client struct {
	mu     sync.Mutex
	frames []frame
	cond   *sync.Cond
	// onFrame, if set before start, sees each frame as it arrives (with
	// mu held).
	onFrame func(host string, data []byte)
}

func newClient() *client {
	c := &client{}
	c.cond = sync.NewCond(&c.mu)
	return c
}

// nic returns the NetSink of host and a func that cuts it.
func (c *client) nic(host string) (outbuf.NetSink, func()) {
	var dead atomic.Bool
	return sinkFunc(func(f []byte) error {
		if dead.Load() {
			return nil
		}
		c.mu.Lock()
		if c.onFrame != nil {
			c.onFrame(host, f)
		}
		c.frames = append(c.frames, frame{append([]byte(nil), f...), host})
		c.cond.Broadcast()
		c.mu.Unlock()
		return nil
	}), func() { dead.Store(true) }
}

func (c *client) seen() []frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]frame(nil), c.frames...)
}

// waitFrames waits until the client has n frames.
func (c *client) waitFrames(t testing.TB, n int) {
	t.Helper()
	vmmtest.WaitUntil(t, fmt.Sprintf("the client to see %d frames", n), func() bool { return len(c.seen()) >= n })
}

// waitMore waits until the client has more than n frames or until passes,
// and says whether it has.
func (c *client) waitMore(n int, until time.Time) bool {
	wake := time.AfterFunc(time.Until(until), func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer wake.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.frames) <= n && time.Now().Before(until) {
		c.cond.Wait()
	}
	return len(c.frames) > n
}

type sinkFunc func([]byte) error

func (f sinkFunc) SendFrame(b []byte) error { return f(b) }

// filter sits in one direction of the primary↔backup connection.
type filter = linktest.Filter

// cluster is a primary and a backup of one software machine's guest.
type cluster struct {
	t      testing.TB
	cfg    replay.Config
	guest  string
	pages  int // the guests' memory; testPages unless a test sets it before start
	params []sim.Param
	client *client
	arb    witness.Arbiter
	disk   *os.File

	pm, bm         *sim.Machine
	primary        *replay.Primary
	backup         *replay.Backup
	pOut           *outbuf.Buffer
	cutNIC         func()
	cancelP        context.CancelFunc
	pDone          chan struct{} // closed when the primary's Run returned pErr
	pErr           error
	bDone          chan followResult
	link           *linktest.Link // primary↔backup
	up, down       filter         // primary→backup and backup→primary byte paths of the links made from now on; nil copies
	linkBuffer     int            // the links' buffers made from now on (linktest.Link.Buffer; 0: its default)
	live           *replay.Primary
	liveDone       chan error
	cancelB        context.CancelFunc
	primaryConsole bytes.Buffer
	kv             kvState
	// Optional, set before start: the primary's disk (instead of the
	// shared file) and its SyncDisk; a wrapper of each machine's Env.
	pDisk   outbuf.Disk
	pSync   func() error
	envWrap func(host string, env machine.Env) machine.Env
	// Optional, set before start: the backup's own image of a mirrored
	// disk (the shared file stays the primary's). attachImage is the same
	// for the next backup attachBackup makes.
	bImage, attachImage vmm.Disk
	// attachHolds, set before attachBackup, has the backup it makes say
	// its memory holds the guest already (HoldsMemory).
	attachHolds bool
	// Optional, set before start or alonePrimary: what the primary's
	// engine drives instead of its software machine (which pm stays), and a
	// func that sees the primary before it runs.
	pMachine  func(m *sim.Machine) machine.Stepper
	onPrimary func(p *replay.Primary)
	// Optional: what crashPrimary does once the primary's link is cut and
	// its NIC dark, before it waits for its engine to stop.
	afterCrash func()
}

type followResult struct {
	live *replay.Primary
	err  error
}

func newCluster(t testing.TB, guest string, params ...sim.Param) *cluster {
	c := &cluster{t: t, cfg: testConfig(), guest: guest, pages: testPages, params: params, client: newClient(),
		pDone: make(chan struct{}), bDone: make(chan followResult, 1), link: linktest.New()}
	arb, err := witness.Open("disk:" + filepath.Join(t.TempDir(), "lease"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { arb.Close() })
	c.arb = arb
	c.disk, err = os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.disk.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.disk.Close() })
	return c
}

func (c *cluster) start() {
	t := c.t
	ctx := context.Background()
	pf := witness.NewFence(c.arb, "primary")
	if _, err := pf.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var err error
	pplug := &replay.Plug{}
	if c.pm, err = sim.New(c.guest, c.pages, c.wrap("primary", pplug), c.params...); err != nil {
		t.Fatal(err)
	}
	nic, cut := c.client.nic("primary")
	c.cutNIC = cut
	var pdisk outbuf.Disk = c.disk
	if c.pDisk != nil {
		pdisk = c.pDisk
	}
	c.pOut, err = outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: pf, Net: nic, Disk: pdisk, Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	if c.primary, err = replay.NewPrimary(c.cfg, c.driven(c.pm), pplug, c.pOut, pf, 1, nil); err != nil {
		t.Fatal(err)
	}
	c.primary.Console = &c.primaryConsole
	c.primary.SyncDisk = c.pSync
	if c.onPrimary != nil {
		c.onPrimary(c.primary)
	}

	bf := witness.NewFence(c.arb, "backup")
	bplug := &replay.Plug{}
	if c.bm, err = sim.New(c.guest, c.pages, c.wrap("backup", bplug), c.params...); err != nil {
		t.Fatal(err)
	}
	var bdisk outbuf.Disk = c.disk
	if c.bImage != nil {
		bdisk = c.bImage
		c.primary.MirrorDisk(c.bImage.Size())
	}
	makeOut := func(gen uint64) (*outbuf.Buffer, error) {
		nic, _ := c.client.nic("backup")
		return outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: gen, Fence: bf, Net: nic, Disk: bdisk, Clock: outbuf.SystemClock{}})
	}
	if c.backup, err = replay.NewBackup(c.cfg, c.bm, bplug, bf, makeOut, nil); err != nil {
		t.Fatal(err)
	}
	if c.bImage != nil {
		if err := c.backup.MirrorDisk(c.bImage); err != nil {
			t.Fatal(err)
		}
	}

	bctx, cancelB := context.WithCancel(ctx)
	c.cancelB = cancelB
	pconn, bconn := c.connect(c.link)
	go func() {
		live, err := c.backup.Follow(bctx, bconn)
		c.bDone <- followResult{live, err}
	}()
	pctx, cancelP := context.WithCancel(ctx)
	c.cancelP = cancelP
	go func() { c.pErr = c.primary.Run(pctx, pconn); close(c.pDone) }()
	t.Cleanup(func() {
		cancelP()
		cancelB()
		c.killLink()
		<-c.pDone
		if c.liveDone != nil {
			<-c.liveDone
		}
	})
}

// alonePrimary starts a primary of the cluster's guest with no backup,
// as the client's target, and returns it, its machine and its fence.
func (c *cluster) alonePrimary(ctx context.Context) (*replay.Primary, *sim.Machine, *witness.Fence) {
	t := c.t
	fence := witness.NewFence(c.arb, "first")
	if _, err := fence.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}
	plug := &replay.Plug{}
	m, err := sim.New(c.guest, c.pages, plug, c.params...)
	if err != nil {
		t.Fatal(err)
	}
	nic, cut := c.client.nic("first")
	c.cutNIC = cut
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: fence, Net: nic, Disk: c.disk, Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := replay.NewPrimary(c.cfg, c.driven(m), plug, out, fence, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.onPrimary != nil {
		c.onPrimary(p)
	}
	pctx, stop := context.WithCancel(ctx)
	c.cancelP = stop
	go func() { c.pErr = p.Run(pctx, nil); close(c.pDone) }()
	t.Cleanup(func() { stop(); <-c.pDone })
	c.primary, c.pm, c.live = p, m, p
	return p, m, fence
}

// driven is what the primary's engine drives: m, or pMachine's wrapper.
func (c *cluster) driven(m *sim.Machine) machine.Stepper {
	if c.pMachine == nil {
		return m
	}
	return c.pMachine(m)
}

// wrap applies envWrap, if set, to a machine's Env.
func (c *cluster) wrap(host string, env machine.Env) machine.Env {
	if c.envWrap == nil {
		return env
	}
	return c.envWrap(host, env)
}

// connect returns a primary's and a backup's end of a new connection on
// link, with the test's filters in its path.
func (c *cluster) connect(link *linktest.Link) (primary, backup net.Conn) {
	link.Buffer = c.linkBuffer
	link.SetFilter(linktest.Up, c.up)
	link.SetFilter(linktest.Down, c.down)
	return link.Pipe()
}

func copyAll(from io.Reader, to io.Writer) { io.Copy(to, from) }

// killLink drops the connection between the hosts at once, both ways,
// with whatever was in flight.
func (c *cluster) killLink() { c.link.Cut() }

// crashPrimary stops the primary as a crash would: its engine stops, its
// link drops with whatever was in flight, its NIC goes dark. The order
// matters in one process: the engine is told first so that it does not
// contest the witness, and the NIC goes dark after the link, so that no
// release the NIC swallowed is reported to the backup as made.
func (c *cluster) crashPrimary() {
	c.cancelP()
	c.killLink()
	c.cutNIC()
	if c.afterCrash != nil {
		c.afterCrash()
	}
	vmmtest.Closed(c.t, "the crashed primary's Run to return", c.pDone)
	if err := c.pErr; err != nil && !errors.Is(err, context.Canceled) {
		c.t.Logf("crashed primary's Run: %v", err)
	}
}

// stopPrimary ends the primary gracefully: the log it wrote reaches the
// backup, which then replays it all and takes over.
func (c *cluster) stopPrimary() {
	c.cancelP()
	vmmtest.Closed(c.t, "the stopped primary's Run to return", c.pDone)
	if err := c.pErr; err != nil && !errors.Is(err, context.Canceled) {
		c.t.Fatalf("primary's Run: %v", err)
	}
}

// handOverAndCheck stops the primary gracefully, has the backup take over,
// and checks that it holds the primary's machine and that the client saw
// one machine's outputs of guest.
func (c *cluster) handOverAndCheck(t *testing.T, guest string) {
	t.Helper()
	c.stopPrimary()
	c.failover()
	sameMachine(t, c.pm, c.bm)
	checkOutputs(t, guest, c.client.seen())
}

// failover waits for the backup to take over and runs the live primary it
// became.
func (c *cluster) failover() *replay.Primary {
	t := c.t
	r := vmmtest.Receive(t, "the backup to take over", c.bDone)
	if r.err != nil {
		t.Fatalf("backup did not go live: %v", r.err)
	}
	c.live = r.live
	return r.live
}

// runLive lets the live backup run its guest on.
func (c *cluster) runLive() {
	ctx, cancel := context.WithCancel(context.Background())
	c.liveDone = make(chan error, 1)
	go func() { c.liveDone <- c.live.Run(ctx, nil) }()
	c.t.Cleanup(cancel)
}

// load sends INCR a to the host to() names every interval (the pace of a
// client's load) until done says enough. (No reply is judged: for tests
// whose primary loses replies it held.)
func (c *cluster) load(what string, every time.Duration, to func() *replay.Primary, done func() bool) {
	c.t.Helper()
	tick := time.NewTicker(every)
	defer tick.Stop()
	deadline := time.Now().Add(vmmtest.Bound)
	for !done() {
		if time.Now().After(deadline) {
			vmmtest.WaitedTooLong(c.t, what)
		}
		to().Receive(sim.KVRequest("INCR", "a"))
		<-tick.C
	}
}

// target is where the client's requests go: the primary, or the backup
// once it is live.
func (c *cluster) target() *replay.Primary {
	if c.live != nil {
		return c.live
	}
	return c.primary
}

// sameMachine fails the test unless the two machines are in the same
// state: memory, machine state and signature. (Not the instruction count:
// it is not machine state, and a backup restored from a checkpoint counts
// from there.)
func sameMachine(t *testing.T, a, b *sim.Machine) {
	t.Helper()
	if !bytes.Equal(a.Memory(), b.Memory()) {
		n := 0
		for i := range a.Memory() {
			if a.Memory()[i] != b.Memory()[i] {
				n++
			}
		}
		t.Errorf("memory differs in %d bytes", n)
	}
	as, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	bs, err := b.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(as, bs) {
		t.Errorf("machine state differs")
	}
	asig, _ := a.Signature()
	bsig, _ := b.Signature()
	if asig != bsig {
		t.Errorf("signatures differ: %+v and %+v", asig, bsig)
	}
}
