package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// clientView records the outputs a client receives, in order. A crashed
// host's releases no longer reach it.
type clientView struct {
	mu   sync.Mutex
	got  []uint64
	from []string
	// check, if set, runs at every release (before it is recorded).
	check func(n uint64) error
	err   error
}

// sink returns the NetSink of one host; cut() makes it drop everything
// from then on, as a dead host's NIC does.
func (c *clientView) sink(host string) (outbuf.NetSink, func()) {
	var dead atomic.Bool
	return sinkFunc(func(f []byte) error {
		if dead.Load() {
			return nil
		}
		n, _, err := parseFrame(f)
		if err != nil {
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.check != nil && c.err == nil {
			c.err = c.check(n)
		}
		c.got = append(c.got, n)
		c.from = append(c.from, host)
		return nil
	}), func() { dead.Store(true) }
}

func (c *clientView) snapshot() ([]uint64, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]uint64(nil), c.got...), append([]string(nil), c.from...)
}

// waitCount waits until the client has seen n outputs.
func (c *clientView) waitCount(t *testing.T, n int) {
	t.Helper()
	vmmtest.WaitUntil(t, fmt.Sprintf("the client to see %d outputs", n), func() bool {
		got, _ := c.snapshot()
		return len(got) >= n
	})
}

type sinkFunc func([]byte) error

func (f sinkFunc) SendFrame(b []byte) error { return f(b) }

func testConfig() Config {
	c := DefaultConfig()
	c.Epoch = 2 * time.Millisecond
	c.MinEpoch = time.Millisecond
	c.Heartbeat = 20 * time.Millisecond
	// The tests end links by cutting them (crashPrimary) and silence them
	// only when silence is what they test (TestSilentBackupIsLost sets its
	// own timeout): a peer found silent here would be a loaded host's
	// stall, and a backup taking over from a running primary, or a primary
	// dropping a running backup, would fail a test that tests neither.
	c.FailureTimeout = 10 * time.Second
	c.Verify = true
	return c
}

// pair is a primary and a backup, each with a simGuest, on an in-memory
// link (checkpoint/linktest) whose faults the test injects, with a
// disk-lease witness, writing to one client. It stays an engine-level
// harness beside modes/node/nodetest's pair of nodes: its guest is the
// fake of simguest_test.go, whose outputs the test ties to the epoch that
// emitted them, and it reaches into the engines (the backup's receiver,
// the primary's statistics).
type pair struct {
	t       *testing.T
	cfg     Config
	client  *clientView
	arb     witness.Arbiter
	pg, bg  *simGuest
	primary *Primary
	backup  *Backup
	cutP    func()
	pDone   chan error
	bDone   chan error
	cancelP context.CancelFunc
	bOut    *outbuf.Buffer
	disk    *vmmtest.MemDisk // the shared disk, or the primary's if mirrored
	// mirrored, set before start, gives the backup a disk of its own,
	// bdisk, that full syncs and checkpoints keep equal (MirrorDisk).
	mirrored bool
	bdisk    *vmmtest.MemDisk
	// onBackupDisk, if set, sees the backup's own disk before it is used.
	// tail is the size of the mirrored disk past the guest's slots (data
	// only a full sync copies; default 2 blocks and a bit).
	onBackupDisk func(*vmmtest.MemDisk)
	tail         int64
	emitted      sync.Map       // count → epoch it was emitted in
	link         *linktest.Link // primary↔backup; a test may set its filters before start
	// flushEvery, if set, is how often the guests FLUSH (in steps).
	flushEvery uint64
	// primaryPath is the primary host's way to its disk, cut when the
	// host dies.
	primaryPath *diskPath
	// guestSpan, set before start, confines the guests' writes to their
	// first guestSpan pages (simGuest.span).
	guestSpan uint64
	// backupLog and primaryLog, set before start, are the backup's and
	// the primary's loggers (nil: the default).
	backupLog, primaryLog *slog.Logger
	// copyAfterResume, set before start, has the primary copy every
	// epoch's pages after the guest resumes (the simGuest's CopyOnWrite).
	copyAfterResume bool
}

func newPair(t *testing.T, cfg Config) *pair {
	p := &pair{t: t, cfg: cfg, client: &clientView{}, pDone: make(chan error, 1), bDone: make(chan error, 1), link: linktest.New()}
	arb, err := witness.Open("disk:" + filepath.Join(t.TempDir(), "lease"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { arb.Close() })
	p.arb = arb
	return p
}

// build makes p's guests, disks, output buffers and engines, nothing
// started.
func (p *pair) build(pages uint64) {
	t := p.t
	pf := witness.NewFence(p.arb, "primary")
	if _, err := pf.Acquire(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	p.pg, p.bg = newSimGuest(pages), newSimGuest(pages)
	p.pg.span, p.bg.span = p.guestSpan, p.guestSpan
	if p.flushEvery != 0 {
		p.pg.flushEvery, p.bg.flushEvery = p.flushEvery, p.flushEvery
	}
	p.disk = vmmtest.NewMemDisk(int64(p.pg.slots * recordSize))
	if p.mirrored {
		// Data the guest does not write, past its slots: only a full
		// sync's copy of the disk brings it to the backup's image.
		if p.tail == 0 {
			p.tail = 2*format.DiskBlockSize + 100
		}
		img := make([]byte, int64(p.pg.slots*recordSize)+p.tail)
		for i := int(p.pg.slots * recordSize); i < len(img); i++ {
			img[i] = byte(i*7 + i>>16)
		}
		p.disk.SetImage(img)
	}
	sink, cut := p.client.sink("primary")
	p.cutP = cut
	p.primaryPath = &diskPath{Disk: p.disk}
	held := NewHeldDisk(p.primaryPath, func() uint64 { return p.primary.Position() })
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: pf, Net: sink, Disk: held.Sink(), Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	held.Attach(out)
	held.SetPoll(p.pg.poke)
	if p.copyAfterResume {
		p.cfg.CopyAfterResume = CopyAlways // with the choice below: every epoch, from one page on
	}
	p.primary, err = NewPrimary(p.cfg, p.pg, out, pf, 1, p.primaryLog)
	if err != nil {
		t.Fatal(err)
	}
	p.primary.SetDisk(held)
	if p.copyAfterResume {
		p.primary.choice = copyChoice{eligible: func(n, runs int) bool { return n > 0 }} // CopyAlways, from one page on
	}
	holdCounts(p.pg, out, p.primary.Position, func(n, pos uint64) { p.emitted.Store(n, pos) })
	p.bdisk = p.disk
	if p.mirrored {
		p.primary.MirrorDisk()
		p.bdisk = vmmtest.NewMemDisk(p.disk.Size())
		if p.onBackupDisk != nil {
			p.onBackupDisk(p.bdisk)
		}
	}
	p.pg.disk, p.bg.disk = held, p.bdisk
	p.pg.onFlushed = p.flushedDurably(p.disk)
	p.bg.onFlushed = p.flushedDurably(p.bdisk)
	bf := witness.NewFence(p.arb, "backup")
	p.backup, err = NewBackup(p.cfg, p.bg, bf, p.backupLog)
	if err != nil {
		t.Fatal(err)
	}
	if p.mirrored {
		if err := p.backup.MirrorDisk(p.bdisk); err != nil {
			t.Fatal(err)
		}
	} else {
		p.backup.SetDisk(p.disk)
	}
	bsink, _ := p.client.sink("backup")
	p.bOut, err = outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 2, Fence: bf, Net: bsink, Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	holdCounts(p.bg, p.bOut, func() uint64 { return 1 }, nil)
}

func (p *pair) start(pages uint64) {
	t := p.t
	ctx := context.Background()
	p.build(pages)
	conn, bconn := p.link.Pipe()
	go func() { p.bDone <- p.backup.Receive(ctx, bconn) }()
	if err := p.pg.Start(); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	p.cancelP = cancel
	go func() { p.pDone <- p.primary.Run(pctx, conn) }()
	t.Cleanup(func() {
		cancel()
		p.link.Cut()
		p.pg.Pause()
		p.bg.Pause()
	})
}

// flushedDurably is a guest's check after the FLUSH of step n completed:
// the durable disk holds every record written before it that no later
// write has replaced.
func (p *pair) flushedDurably(disk *vmmtest.MemDisk) func(n uint64) error {
	return func(n uint64) error {
		img := disk.Durable()
		s := p.pg.slots
		for k := n - min(n, s) + 1; k <= n; k++ {
			if m, _, ok := parseRecord(img[k%s*recordSize:]); !ok || m != k {
				return fmt.Errorf("FLUSH after step %d completed, but the durable disk's slot of step %d holds %d (valid %v)", n, k, m, ok)
			}
		}
		return nil
	}
}

// crashPrimary stops the primary as a crash would: its guest stops, its
// NIC goes dark, its engine stops (first, so that it does not contest the
// witness over the link's failure), its link is cut. With host, the host
// dies too: the disk's write cache loses what was not flushed.
func (p *pair) crashPrimary(host bool) {
	p.pg.Halt() // not Pause: a capture under way would resume it
	p.cutP()
	p.primaryPath.cut.Store(true) // a dead host writes nothing more: its held writes' flusher neither
	p.cancelP()
	vmmtest.Receive(p.t, "the crashed primary's Run to return", p.pDone)
	p.link.Cut()
	if host {
		p.disk.Crash()
	}
}

// diskPath is a host's way to a disk, which its death cuts: from then on
// nothing it issues reaches the disk (a write under way may still land, as
// one in flight on a real shared disk does).
type diskPath struct {
	vmm.Disk
	cut atomic.Bool
}

var errHostDead = errors.New("the host is dead")

func (d *diskPath) ReadAt(b []byte, off int64) (int, error) {
	if d.cut.Load() {
		return 0, errHostDead
	}
	return d.Disk.ReadAt(b, off)
}

func (d *diskPath) WriteAt(b []byte, off int64) (int, error) {
	if d.cut.Load() {
		return 0, errHostDead
	}
	return d.Disk.WriteAt(b, off)
}

func (d *diskPath) Flush() error {
	if d.cut.Load() {
		return errHostDead
	}
	return d.Disk.Flush()
}

// checkOutcome runs the backup a while after failover (until the client saw
// more outputs), then checks the client's view and the disk: the guest
// never read back less than it had written; every step the client heard of
// has its record on the disk, or a later one in its slot.
func (p *pair) checkOutcome(more int) {
	t := p.t
	t.Helper()
	before, _ := p.client.snapshot()
	vmmtest.WaitUntil(t, fmt.Sprintf("%d more outputs from the backup", more), func() bool {
		got, _ := p.client.snapshot()
		return len(got) >= len(before)+more || p.bg.Err() != nil
	})
	p.bg.Pause()
	got, from := p.client.snapshot()
	checkView(t, got, from)
	for _, g := range []*simGuest{p.pg, p.bg} {
		if err := g.Err(); err != nil {
			t.Fatal(err)
		}
	}
	checkMemory(t, p.bg)
	checkDisk(t, p.bdisk.Bytes(), p.pg.slots, got)
	if tail := int(p.pg.slots * recordSize); p.mirrored && !bytes.Equal(p.bdisk.Bytes()[tail:], p.disk.Bytes()[tail:]) {
		t.Fatal("the backup's image lacks the primary's data past the guest's slots")
	}
}

// checkMemory checks that g, paused, holds exactly the memory its program
// has after its steps: those of a guest of the same shape run from the
// start (a backup that went live holds what the primary's guest held at
// its last committed epoch; a page it missed, or took wrongly, shows here).
func checkMemory(t *testing.T, g *simGuest) {
	t.Helper()
	if g.requests {
		return // the ring holds what the network delivered
	}
	ref := newSimGuest(g.pages)
	ref.span = g.span
	for ref.steps < g.steps {
		if err := ref.step(); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(ref.mem, g.mem) {
		for q := uint64(0); q < g.pages; q++ {
			if off := q * format.PageSize; !bytes.Equal(ref.mem[off:off+format.PageSize], g.mem[off:off+format.PageSize]) {
				t.Fatalf("after %d steps the guest's page %d is not what its program wrote", g.steps, q)
			}
		}
	}
}

// checkDisk checks that every step in told has its record, or a later one
// of the same slot, on disk.
func checkDisk(t *testing.T, img []byte, slots uint64, told []uint64) {
	t.Helper()
	for _, n := range told {
		m, _, ok := parseRecord(img[n%slots*recordSize:])
		if !ok || m < n || m%slots != n%slots {
			t.Fatalf("the client was told of step %d, but its slot holds record %d (valid %v)", n, m, ok)
		}
	}
}

// failover waits for the backup to notice and goes live.
func (p *pair) failover() uint64 {
	t := p.t
	t.Logf("backup's receiver ended: %v", vmmtest.Receive(t, "the backup to notice the primary was gone", p.bDone))
	gen, err := p.backup.GoLive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.bOut.Commit(math.MaxUint64); err != nil {
		t.Fatal(err)
	}
	return gen
}

// checkView checks what the client saw: the primary's outputs then the
// backup's, each strictly consecutive, and no number repeated across the
// failover (a gap is the outputs of the last epochs, never released).
func checkView(t *testing.T, got []uint64, from []string) {
	t.Helper()
	for i := 1; i < len(got); i++ {
		switch {
		case from[i] != from[i-1]:
			if from[i-1] != "primary" || from[i] != "backup" {
				t.Fatalf("output %d from %s after %s", i, from[i], from[i-1])
			}
			if got[i] <= got[i-1] {
				t.Fatalf("after failover the backup said %d, the primary had said %d: repeated", got[i], got[i-1])
			}
		case got[i] != got[i-1]+1:
			t.Fatalf("%s said %d after %d", from[i], got[i], got[i-1])
		}
	}
}

func TestEpochsReplicateAndOutputsFollowAcks(t *testing.T) {
	p := newPair(t, testConfig())
	p.client.check = func(n uint64) error {
		pos, ok := p.emitted.Load(n)
		if !ok {
			return fmt.Errorf("count %d released but never emitted", n)
		}
		if st := p.backup.Status(); st.State != format.StateCommitted || st.Epoch < pos.(uint64) {
			return fmt.Errorf("count %d of epoch %d released while the backup has committed %d", n, pos, st.Epoch)
		}
		return nil
	}
	p.start(64)
	vmmtest.WaitUntil(t, "50 epochs acknowledged", func() bool {
		p.primary.Stats.mu.Lock()
		defer p.primary.Stats.mu.Unlock()
		return p.primary.Stats.Acked >= 50 || p.pg.Err() != nil
	})
	got, from := p.client.snapshot()
	checkView(t, got, from)
	if len(got) == 0 || got[0] != 1 {
		t.Fatalf("outputs start %v, want 1", got[:min(len(got), 1)])
	}
	if err := p.pg.Err(); err != nil {
		t.Fatal(err)
	}
	p.pg.mu.Lock()
	recycled := p.pg.recycled
	p.pg.mu.Unlock()
	if recycled == 0 {
		t.Error("the primary gave no machine state back to its machine once encoded")
	}
	p.client.mu.Lock()
	defer p.client.mu.Unlock()
	if p.client.err != nil {
		t.Fatal(p.client.err)
	}
}

// TestSlowBackupHoldsOutputs delays every ack by 100 ms: no output may reach
// the client before the backup committed its epoch, however long that takes.
func TestSlowBackupHoldsOutputs(t *testing.T) {
	p := newPair(t, testConfig())
	p.link.SetFilter(linktest.Down, linktest.Delay(100*time.Millisecond))
	p.flushEvery = 50 // a FLUSH waits for an ack: 100 ms here
	p.client.check = func(n uint64) error {
		pos, _ := p.emitted.Load(n)
		if st := p.backup.Status(); st.Epoch < pos.(uint64) {
			return fmt.Errorf("count %d of epoch %d released while the backup has committed %d", n, pos, st.Epoch)
		}
		return nil
	}
	p.start(64)
	p.client.waitCount(t, 500)
	p.client.mu.Lock()
	err := p.client.err
	p.client.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
}

// TestFailoverAtRandomMoments crashes the primary (its process, or in half
// the runs its whole host, losing the disk's write cache) at 20 random
// moments (in half the runs every epoch's pages are copied after the guest
// resumes, each before the guest's next write to it); each time the backup goes live from its last committed epoch,
// the client's view stays that of one machine, and the disk holds every
// write the guest saw complete.
//
// With mirrored disks (odd runs) the backup's own image, which full syncs
// and checkpoints fill, is the one checked.
func TestFailoverAtRandomMoments(t *testing.T) {
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for i := 0; i < 20; i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			p := newPair(t, testConfig())
			p.mirrored, p.copyAfterResume = i%2 == 1, i%4 >= 2
			p.start(64)
			p.client.waitCount(t, 1+rng.Intn(300))
			time.Sleep(time.Duration(rng.Intn(20)) * time.Millisecond) // a random crash moment: the test's point
			p.crashPrimary(rng.Intn(2) == 0)
			if gen := p.failover(); gen != 2 {
				t.Fatalf("backup went live with generation %d", gen)
			}
			p.checkOutcome(50)
			_, _, _, _, dirty := p.primary.Stats.Counters()
			if deferred, _ := p.primary.Stats.Deferrals(); p.copyAfterResume && dirty > 0 && deferred == 0 {
				t.Error("no epoch's pages were copied after the guest resumed")
			}
		})
	}
}

// TestCommittedDiskWritesSurviveFailover opens the window of issue 5 wide:
// acks stop reaching the primary while the backup goes on committing, so
// several committed epochs' disk writes are never released; then the
// primary dies (as a process, or with its host and the disk's write
// cache). The backup must write them again before its guest runs: the
// guest reads back its last record at once and stops if it is missing.
func TestCommittedDiskWritesSurviveFailover(t *testing.T) {
	for _, host := range []bool{false, true} {
		t.Run(fmt.Sprintf("host=%v", host), func(t *testing.T) {
			p := newPair(t, testConfig())
			var drop atomic.Bool
			p.link.SetFilter(linktest.Down, dropAcks(&drop))
			p.start(64)
			p.client.waitCount(t, 100)
			drop.Store(true)
			// Against what the primary has heard, read each time: acks on
			// their way when the drop began still arrive, and the primary
			// sends at most MaxInFlight (4) epochs past its last ack, so a
			// count from the backup's epoch at the drop might never come.
			vmmtest.WaitUntil(t, "the backup to commit 3 epochs the primary never hears of", func() bool {
				_, acked, _, _, _ := p.primary.Stats.Counters()
				return p.backup.Status().Epoch >= acked+3
			})
			p.crashPrimary(host)
			p.failover()
			if n := len(p.backup.recv.DiskWrites()); n == 0 { // the receiver has ended
				t.Fatal("test setup: the backup kept no unreleased disk writes")
			} else {
				t.Logf("backup kept %d disk writes of epochs the primary never released", n)
			}
			p.checkOutcome(50)
		})
	}
}

// TestCorruptCheckpointIsRejectedAndResynced flips one byte of one
// checkpoint in flight: the backup rejects it, keeps its epoch, asks for a
// full sync, and still fails over correctly afterwards. With one epoch in
// flight the primary is certain to be waiting for the ack of the rejected
// epoch when the request arrives.
func TestCorruptCheckpointIsRejectedAndResynced(t *testing.T) {
	for _, inflight := range []int{1, 4} {
		t.Run(fmt.Sprintf("inflight=%d", inflight), func(t *testing.T) {
			cfg := testConfig()
			cfg.MaxInFlight = inflight
			p := newPair(t, cfg)
			p.link.SetFilter(linktest.Up, corruptNth(20))
			p.start(64)
			stat := func() (resyncs, acked uint64) {
				p.primary.Stats.mu.Lock()
				defer p.primary.Stats.mu.Unlock()
				return p.primary.Stats.Resyncs, p.primary.Stats.Acked
			}
			vmmtest.WaitUntil(t, "a resync after the corrupt checkpoint", func() bool { r, _ := stat(); return r > 0 })
			_, ackedThen := stat()
			vmmtest.WaitUntil(t, "20 more epochs acknowledged", func() bool { _, a := stat(); return a >= ackedThen+20 })
			if r, _ := stat(); r != 1 {
				t.Errorf("%d resyncs for one corrupt checkpoint", r)
			}
			p.crashPrimary(false)
			p.failover()
			p.checkOutcome(50)
		})
	}
}

// TestStuckBackupIsLost (mirrored disks): the backup's image stops
// completing writes while the pair runs, so its receiver hangs applying a
// checkpoint while its heartbeats could go on, and no ack comes. A backup
// whose image has been in one write for the failure timeout falls silent:
// the primary must apply the backup-lost rule, not hold the guest's
// outputs for ever.
func TestStuckBackupIsLost(t *testing.T) {
	cfg := testConfig()
	cfg.FailureTimeout = 300 * time.Millisecond // how long the backup may be stuck
	p := newPair(t, cfg)
	p.mirrored = true
	var hang atomic.Bool
	release := make(chan struct{})
	p.onBackupDisk = func(d *vmmtest.MemDisk) {
		d.OnWrite = func([]byte, int64) error {
			if hang.Load() {
				<-release
			}
			return nil
		}
	}
	p.start(64)
	t.Cleanup(func() { close(release) }) // before the pair's own cleanups
	p.client.waitCount(t, 20)
	hang.Store(true)
	if err := vmmtest.Receive(t, "the primary to give up on a stuck backup", p.pDone); !errors.Is(err, ErrBackupLost) {
		t.Fatalf("the primary's Run: %v, want ErrBackupLost", err)
	}
}

// dropAcks forwards the backup's messages, except acks once drop is set.
func dropAcks(drop *atomic.Bool) linktest.Filter {
	return linktest.Frames(func(typ uint16, _ []byte) bool {
		return !drop.Load() || format.MsgType(typ) != format.MsgAck
	})
}

// corruptNth flips a byte in the middle of the first message from the nth
// on that is big enough to be a checkpoint.
func corruptNth(nth int) linktest.Filter {
	i, done := 0, false
	return linktest.Frames(func(_ uint16, body []byte) bool {
		if i++; i > nth && len(body) > 100 && !done {
			body[len(body)/2] ^= 0x40
			done = true
		}
		return true
	})
}

// TestSilentBackupIsLost: the backup→primary path goes dark (no reset, no
// error: nothing arrives), so no ack and no heartbeat arrives and the
// epochs in flight pile up. The primary must find the backup silent and
// apply the backup-lost rule, not wait for acks forever (a link gone dark
// fails no write for long: the kernel's buffers take them).
func TestSilentBackupIsLost(t *testing.T) {
	cfg := testConfig()
	cfg.FailureTimeout = 300 * time.Millisecond // the silence this test makes
	p := newPair(t, cfg)
	p.start(64)
	p.client.waitCount(t, 20)
	p.link.Dark(linktest.Down)
	if err := vmmtest.Receive(t, "the primary to give up on a silent backup", p.pDone); !errors.Is(err, ErrBackupLost) {
		t.Fatalf("the primary's Run: %v, want ErrBackupLost", err)
	}
}

// A disk write the backup cannot perform on its own image (a mirrored
// disk) is a lost backup, never a silent difference: the backup's receiver
// stops with ErrImage and drops its committed state (it can no longer go
// live), and the primary goes on alone.
func TestMirroredImageWriteFailureLosesTheBackup(t *testing.T) {
	p := newPair(t, testConfig())
	p.mirrored = true
	var fail atomic.Bool
	p.onBackupDisk = func(d *vmmtest.MemDisk) {
		d.OnWrite = func([]byte, int64) error {
			if fail.Load() {
				return errors.New("EIO (test)")
			}
			return nil
		}
	}
	p.start(64)
	p.client.waitCount(t, 30)
	fail.Store(true)
	err := vmmtest.Receive(t, "the backup's receiver to stop", p.bDone)
	if !errors.Is(err, ErrImage) {
		t.Fatalf("the backup's Receive: %v, want ErrImage", err)
	}
	if st := p.backup.Status(); st.State != format.StateEmpty {
		t.Fatalf("after the failed write the backup is %v, want empty (it must not go live)", st.State)
	}
	if _, err := p.backup.GoLive(context.Background()); err == nil {
		t.Fatal("a backup whose image failed went live")
	}
	if err := vmmtest.Receive(t, "the primary to lose its backup", p.pDone); !errors.Is(err, ErrBackupLost) {
		t.Fatalf("the primary's Run: %v, want ErrBackupLost", err)
	}
}

// TestVerifyFindsACorruptImage (--verify, mirrored disks): a byte of the
// backup's image that the guest never writes, in the disk's last range of
// five, is changed behind its back. The hashes the checkpoints carry (of
// the range compared in turn, as none is written there) find it:
// the backup drops its committed state and asks for a full sync, which
// copies the disk again; the image is whole again and the pair goes on.
func TestVerifyFindsACorruptImage(t *testing.T) {
	cfg := testConfig()
	cfg.Verify = true
	p := newPair(t, cfg)
	p.mirrored, p.tail = true, 4*format.DiskHashRange
	p.start(64)
	p.client.waitCount(t, 30)
	tail := p.disk.Size() - 3 // past the guest's slots, in the last range
	good := p.disk.Bytes()[tail]
	if _, err := p.bdisk.WriteAt([]byte{good ^ 0x5a}, tail); err != nil {
		t.Fatal(err)
	}
	vmmtest.WaitUntil(t, "the backup to find its image corrupt and ask for a full sync", func() bool {
		return p.primary.Stats.ResyncCount() >= 1
	})
	vmmtest.WaitUntil(t, "the full sync to repair the image", func() bool {
		return p.bdisk.Bytes()[tail] == good && p.backup.Status().State == format.StateCommitted
	})
	seen, _ := p.client.snapshot()
	p.client.waitCount(t, len(seen)+20) // the pair goes on
}

// TestStopAndCopySync (PrecopyRounds 0): the full sync is one commit that
// carries every page and, mirrored, every disk block, copied with the guest
// paused; the backup then fails over as after a pre-copy.
func TestStopAndCopySync(t *testing.T) {
	cfg := testConfig()
	cfg.PrecopyRounds = 0
	p := newPair(t, cfg)
	p.mirrored = true
	p.start(64)
	p.client.waitCount(t, 50)
	if st := p.backup.Status(); st.State != format.StateCommitted {
		t.Fatalf("backup is %v", st.State)
	}
	p.crashPrimary(false)
	p.failover()
	p.checkOutcome(50)
}

// TestRejectedSyncCommitIsSentAgain: the backup rejects the first full
// sync's commit (a byte flipped in flight). Its request for a full sync
// comes while that sync awaits its ack, when the primary takes requests
// as moot, but it names that commit: the primary syncs again at once, not
// after FailureTimeout (the fallback for a commit lost on the way), and
// the pair then fails over as after any sync. Lost is the sync whose
// commit is lost (a fallback it is, too, for a backup that does not name
// it): the primary goes on capturing epochs, which the backup rejects,
// until MaxInFlight await their acks, and must not wait for them forever.
func TestRejectedSyncCommitIsSentAgain(t *testing.T) {
	for _, tc := range []struct {
		name   string
		filter linktest.Filter
		log    string // what the primary must say
	}{
		{"named", corruptFirst(func(h format.Header) bool { return h.Kind == format.KindSyncCommit }), "backup asks for a full sync"},
		{"lost", dropFirst(func(h format.Header) bool { return h.Kind == format.KindSyncCommit }), "full sync not acknowledged; starting another"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			if tc.name == "lost" {
				cfg.FailureTimeout = 2 * time.Second // how long the sync goes unacknowledged
			}
			p := newPair(t, cfg)
			var plog vmmtest.Console
			p.primaryLog = slog.New(slog.NewTextHandler(&plog, nil))
			p.link.SetFilter(linktest.Up, tc.filter)
			p.start(64)
			vmmtest.WaitUntil(t, "the backup to commit a second sync", func() bool {
				return p.backup.Status().State == format.StateCommitted
			})
			if !strings.Contains(plog.String(), tc.log) {
				t.Fatalf("the primary did not say %q:\n%s", tc.log, plog.String())
			}
			if tc.name == "named" && strings.Contains(plog.String(), "full sync not acknowledged") {
				t.Fatalf("the primary waited for FailureTimeout on a sync the backup refused:\n%s", plog.String())
			}
			p.client.waitCount(t, 20)
			p.crashPrimary(false)
			p.failover()
			p.checkOutcome(20)
		})
	}
}

// dropFirst leaves out the first checkpoint whose header which says.
func dropFirst(which func(format.Header) bool) linktest.Filter {
	done := false
	return linktest.Frames(func(typ uint16, body []byte) bool {
		if h, ok := format.PeekHeader(body); !done && ok && format.MsgType(typ) == format.MsgCheckpoint && which(h) {
			done = true
			return false
		}
		return true
	})
}

// corruptFirst flips a byte in the middle of the first checkpoint whose
// header which says.
func corruptFirst(which func(format.Header) bool) linktest.Filter {
	done := false
	return linktest.Frames(func(typ uint16, body []byte) bool {
		if h, ok := format.PeekHeader(body); !done && ok && format.MsgType(typ) == format.MsgCheckpoint && which(h) {
			body[len(body)/2] ^= 0x40
			done = true
		}
		return true
	})
}
