package replay_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// tickParams make the tick guest busy enough that its timer often fires
// while it computes, so interrupts land by signature, not only at HLT.
var tickParams = []sim.Param{{Name: "period_ns", Value: 200_000}, {Name: "work", Value: 5_000}, {Name: "every", Value: 5}}

// kvKeys are the keys the client increments in turn. Distinct requests
// matter: if an output left before the backup had the log, the backup's
// machine would answer the client's next request with a reply number it
// already used, for another key's value — one number, two contents.
var kvKeys = []string{"a", "b", "c"}

// kvState is what the kv client of a cluster knows.
//
// Each request is sent from an address of its own (kvClientAddr), and
// the guest answers to the address it came from, so every reply says
// which request (and so which key) it answers. A reply carries no key,
// and with three keys counting up in turn, a value alone is ambiguous: a
// retried request executed twice answers with the value the next key's
// request would have, and a client that guessed from values would take
// one for the other and, after another retry, report a skip that never
// happened.
type kvState struct {
	sent    int               // requests answered so far; the next one's number
	maxSeq  uint64            // highest reply number seen
	scanned int               // frames examined
	values  map[string]uint64 // the last value of each key
	// twice sends every request twice at once: the client whose first
	// reply was late and who retried, without the wait (the guest
	// executes both sends, UDP's at-least-once).
	twice bool
}

// kvClientAddr is the address the client sends request n (0 to 2³²-1)
// from: 10.x.y.1, with n's high half in x.y and its low half the port.
func kvClientAddr(n int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(n >> 24), byte(n >> 16), 1}), uint16(n))
}

// kvRequestOf is the request a reply to addr answers.
func kvRequestOf(addr netip.AddrPort) (int, bool) {
	if !addr.IsValid() || !addr.Addr().Is4() {
		return 0, false
	}
	a := addr.Addr().As4()
	n := int(a[1])<<24 | int(a[2])<<16 | int(addr.Port())
	return n, kvClientAddr(n) == addr
}

// kvRequest is the frame of request n: INCR of its key, from its address.
func kvRequest(n int) []byte {
	return sim.Addressed(kvClientAddr(n), []byte("INCR "+kvKeys[n%len(kvKeys)]))
}

// take judges the next frame the client saw. A reply numbered above every
// one seen (others are repeats, which checkKV judges) is an execution of
// the request it is addressed to: its key's value must be exactly one
// more than the last one seen, whichever send of which request it
// answers, since no reply the guest produced may be lost (replay mode
// repeats, never loses: DESIGN.md invariant 4). It returns the request
// answered, or -1 for a repeat.
func (kv *kvState) take(data []byte) (int, error) {
	r, err := sim.ParseKVReply(data)
	if err != nil || r.Seq <= kv.maxSeq {
		return -1, nil // checkKV judges it
	}
	kv.maxSeq = r.Seq
	addr, _, _ := sim.FrameAddress(data)
	n, ok := kvRequestOf(addr)
	if !ok || n > kv.sent {
		return -1, fmt.Errorf("reply %q to %v: this client sent no such request (the next is %d)", data, addr, kv.sent)
	}
	key := kvKeys[n%len(kvKeys)]
	v, err := strconv.ParseUint(r.Value, 10, 64)
	if r.Status != "VALUE" || err != nil {
		return -1, fmt.Errorf("INCR %s (request %d) answered %q", key, n, data)
	}
	if v != kv.values[key]+1 {
		return -1, fmt.Errorf("INCR %s (request %d) answered %q after value %d: an update whose reply never came, or one lost", key, n, data, kv.values[key])
	}
	kv.values[key] = v
	return n, nil
}

// send sends the request being made (again).
func (c *cluster) send() {
	c.target().Receive(kvRequest(c.kv.sent))
	if c.kv.twice {
		c.target().Receive(kvRequest(c.kv.sent))
	}
}

// incr drives the kv guest like a UDP client: n times, it sends INCR of
// the next key and resends after a timeout until a reply to that request
// comes, checking every reply (take). The timeout only paces the resends:
// a request executed more than once is counted right however late its
// replies come.
func (c *cluster) incr(t *testing.T, n int) {
	t.Helper()
	kv := &c.kv
	if kv.values == nil {
		kv.values = map[string]uint64{}
	}
	for i := 0; i < n; i++ {
		key := kvKeys[kv.sent%len(kvKeys)]
		deadline := time.Now().Add(vmmtest.Bound)
		for answered := false; !answered; {
			c.primaryRunning(t, key)
			c.send()
			wait := time.Now().Add(50 * time.Millisecond)
			for !answered {
				frames := c.client.seen()
				for ; kv.scanned < len(frames); kv.scanned++ {
					got, err := kv.take(frames[kv.scanned].data)
					if err != nil {
						t.Fatalf("from %s: %v", frames[kv.scanned].host, err)
					}
					answered = answered || got == kv.sent
				}
				if !answered && !c.client.waitMore(kv.scanned, wait) {
					break // no reply in time: send again
				}
			}
			if !answered && time.Now().After(deadline) {
				t.Fatalf("no reply to INCR %s after %d requests", key, kv.sent)
			}
		}
		kv.sent++
	}
}

// primaryRunning fails the test if the client's target is the primary and
// its Run returned: nothing would answer the request for key.
func (c *cluster) primaryRunning(t *testing.T, key string) {
	t.Helper()
	if c.live != nil {
		return
	}
	select {
	case <-c.pDone:
		t.Fatalf("INCR %s: the primary's Run returned (%v)", key, c.pErr)
	default:
	}
}

// TestKVClientModel checks the kv client's judge (kvState.take) on replies
// made up as the kv guest makes them: requests 0 to n-1 in turn, some
// executed twice (the client resent them after a late reply), some
// replies lost. A model that guessed the key from the value took, for
// requests 2 and 45 executed twice, reply 48 ("VALUE 17", request 45's
// second execution being counted as request 47's answer after request
// 2's had shifted every guess by one) for a skip: the failure reported on
// a slow machine by TestBackupAttachesToARunningGuest, with no replica
// involved.
func TestKVClientModel(t *testing.T) {
	// replies is what the guest sends back, in order: every reply but the
	// lost-th (-1: none).
	replies := func(n int, twice func(int) bool, lost int) [][]byte {
		values := map[string]uint64{}
		var frames [][]byte
		for i := range n {
			execs := 1
			if twice(i) {
				execs = 2
			}
			for range execs {
				key := kvKeys[i%len(kvKeys)]
				values[key]++
				frames = append(frames, sim.Addressed(kvClientAddr(i), fmt.Appendf(nil, "%d VALUE %d", len(frames)+1, values[key])))
			}
		}
		if lost >= 0 {
			frames = append(frames[:lost], frames[lost+1:]...)
		}
		return frames
	}
	// judge feeds frames to a client that moves to the next request once
	// the one it makes is answered.
	judge := func(frames [][]byte) (int, error) {
		kv := kvState{values: map[string]uint64{}}
		for _, f := range frames {
			n, err := kv.take(f)
			if err != nil {
				return kv.sent, err
			}
			if n == kv.sent {
				kv.sent++
			}
		}
		return kv.sent, nil
	}
	never := func(int) bool { return false }
	for _, tc := range []struct {
		name     string
		frames   [][]byte
		answered int // -1: an error
	}{
		{"each once", replies(60, never, -1), 60},
		{"requests 2 and 45 twice", replies(60, func(i int) bool { return i == 2 || i == 45 }, -1), 60},
		{"every request twice", replies(60, func(int) bool { return true }, -1), 60},
		{"a repeat", append(replies(10, never, -1), replies(10, never, -1)[9]), 10},
		// Its reply lost, request 40 is sent again and executed again.
		{"a reply lost", replies(60, func(i int) bool { return i == 40 }, 40), -1},
		{"a second execution's reply lost", replies(60, func(i int) bool { return i == 2 || i == 45 }, 47), -1},
		{"a reply to no request", [][]byte{sim.Addressed(kvClientAddr(5), []byte("1 VALUE 1"))}, -1},
		{"a reply from the zero address", [][]byte{sim.Addressed(netip.AddrPort{}, []byte("1 VALUE 1"))}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := judge(tc.frames)
			switch {
			case tc.answered < 0 && err == nil:
				t.Fatalf("accepted (%d requests answered)", n)
			case tc.answered < 0:
				t.Logf("rejected: %v", err)
			case err != nil:
				t.Fatalf("request %d: %v", n, err)
			case n != tc.answered:
				t.Fatalf("%d requests answered, want %d", n, tc.answered)
			}
		})
	}
}

// checkKV checks what a kv client saw is one machine's output: reply
// numbers run on without a gap, and a number seen twice (a repeat at the
// failover boundary, which replay mode allows) carries the same reply.
// (incr checks the values.)
func checkKV(t *testing.T, frames []frame) {
	t.Helper()
	bySeq := map[uint64]string{}
	var last uint64
	for i, f := range frames {
		r, err := sim.ParseKVReply(f.data)
		if err != nil {
			t.Fatalf("frame %d from %s: %v", i, f.host, err)
		}
		if prev, ok := bySeq[r.Seq]; ok {
			if prev != string(f.data) {
				t.Fatalf("reply %d said %q and, from %s, %q", r.Seq, prev, f.host, f.data)
			}
			continue
		}
		bySeq[r.Seq] = string(f.data)
		if r.Status != "VALUE" {
			t.Fatalf("reply %q from %s", f.data, f.host)
		}
		if last != 0 && r.Seq != last+1 {
			t.Fatalf("reply %d from %s follows reply %d: not one machine", r.Seq, f.host, last)
		}
		last = r.Seq
	}
}

// TestBackupReplaysToTheSameState runs each guest replicated, stops the
// primary, and compares the two machines after the backup replayed the
// whole log: memory, machine state, registers and instruction count.
func TestBackupReplaysToTheSameState(t *testing.T) {
	t.Run("tick", func(t *testing.T) {
		c := newCluster(t, "tick", tickParams...)
		c.start()
		c.client.waitFrames(t, 30)
		c.stopPrimary()
		c.failover()
		sameMachine(t, c.pm, c.bm)
		st := c.primary.Stats
		bs := c.backup.Stats
		t.Logf("primary: %s", st.PrimaryLine())
		t.Logf("backup: %s", bs.BackupLine())
		if st.Landings.Load() == 0 || bs.BreakpointHits.Load() == 0 {
			t.Errorf("no interrupt landed by signature (landings %d, breakpoint hits %d): the test does not cover RunTo",
				st.Landings.Load(), bs.BreakpointHits.Load())
		}
		if d := bs.Divergences.Load(); d != 0 {
			t.Errorf("%d divergences in a clean run", d)
		}
		checkTicks(t, c.client.seen())
	})
	t.Run("kv", func(t *testing.T) {
		c := newCluster(t, "kv")
		c.start()
		c.incr(t, 100)
		c.stopPrimary()
		c.failover()
		sameMachine(t, c.pm, c.bm)
		if d := c.backup.Stats.Divergences.Load(); d != 0 {
			t.Errorf("%d divergences in a clean run", d)
		}
		checkKV(t, c.client.seen())
	})
}

// checkTicks checks the tick guest's frames: tick counts rise, and so
// does the clock, except that the live backup may repeat frames the
// primary sent (replay mode's boundary repeat).
func checkTicks(t *testing.T, frames []frame) {
	t.Helper()
	var last sim.TickFrame
	sent := map[string]bool{}
	for i, f := range frames {
		tf, err := sim.ParseTickFrame(f.data)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.host == "backup" && sent[string(f.data)] {
			continue
		}
		sent[string(f.data)] = true
		if i > 0 && (tf.Ticks <= last.Ticks || tf.Clock < last.Clock) {
			t.Fatalf("frame %d from %s: %+v after %+v", i, f.host, tf, last)
		}
		last = tf
	}
}

// TestFailoverAtRandomMoments crashes the primary at 20 random moments
// under client traffic; each time the backup takes over and the client's
// view stays that of one machine.
func TestFailoverAtRandomMoments(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 20; i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			c := newCluster(t, "kv")
			c.up = linktest.Delay(2 * time.Millisecond) // a log in flight for a while
			c.start()
			c.incr(t, 1+rng.Intn(60))
			// Crash while a request is in flight (incr sends it again),
			// at a random moment.
			c.send()
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond) // the random moment: the test's point
			c.crashPrimary()
			c.failover()
			c.runLive()
			c.incr(t, 20)
			checkKV(t, c.client.seen())
		})
	}
}

// TestOutputsWaitForTheBackup blocks the backup's acks: the guest runs
// and answers, but nothing leaves the primary until the backup has
// acknowledged the log that produced it.
func TestOutputsWaitForTheBackup(t *testing.T) {
	c := newCluster(t, "kv")
	release := make(chan struct{})
	c.down = func(from io.Reader, to io.Writer) {
		// The backup's hello (an 8-byte frame header and its payload)
		// passes; everything after it, acks and heartbeats, waits.
		hello := format.Hello{Role: format.RoleBackup, MemPages: testPages}.Append(nil)
		if _, err := io.CopyN(to, from, int64(8+len(hello))); err != nil {
			return
		}
		<-release
		copyAll(from, to)
	}
	c.cfg.FailureTimeout = 5 * time.Second // the blocked acks must not look like a dead backup
	c.start()
	// Requests until the guest has answered and run on well past its
	// reply (its log shipped): every reply is held.
	c.load("a reply held and the guest running on", time.Millisecond, c.target, func() bool {
		return c.pOut.Stats().HeldOutputs > 0 && c.primary.Stats.Exits.Load() >= 100
	})
	if n := len(c.client.seen()); n != 0 {
		t.Fatalf("%d replies left the primary with no ack from the backup", n)
	}
	close(release)
	c.client.waitFrames(t, 1)
	checkKV(t, c.client.seen())
}

// attachBackup starts a new backup host and attaches it to p, a primary
// running alone; it returns the backup, what its Follow returns, and a
// func that kills p's link to it.
func (c *cluster) attachBackup(p *replay.Primary, name string) (*sim.Machine, *replay.Backup, chan followResult, func()) {
	t := c.t
	fence := witness.NewFence(c.arb, name)
	plug := &replay.Plug{}
	m, err := sim.New(c.guest, c.pages, plug, c.params...)
	if err != nil {
		t.Fatal(err)
	}
	makeOut := func(gen uint64) (*outbuf.Buffer, error) {
		nic, _ := c.client.nic(name)
		return outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: gen, Fence: fence, Net: nic, Disk: c.disk, Clock: outbuf.SystemClock{}})
	}
	b, err := replay.NewBackup(c.cfg, m, plug, fence, makeOut, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.attachImage != nil {
		if err := b.MirrorDisk(c.attachImage); err != nil {
			t.Fatal(err)
		}
		c.attachImage = nil
	}
	if c.attachHolds {
		b.HoldsMemory()
	}
	link := linktest.New() // this backup's own: kill cuts it
	t.Cleanup(link.Cut)
	pa, bconn := c.connect(link) // the test's filters on this link too
	done := make(chan followResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		live, err := b.Follow(ctx, bconn)
		done <- followResult{live, err}
	}()
	if err := p.Attach(pa); err != nil {
		t.Fatal(err)
	}
	return m, b, done, link.Cut
}

// TestBackupAttachesToARunningGuest is the paper's FT VMotion and
// re-protection: a primary that started alone gets a backup from a full
// checkpoint of its running guest; after that primary dies and the backup
// takes over, the backup in turn gets a new backup, and takes that over
// too. The client's view stays one machine's throughout, and the
// generation rises by one at each failover.
func TestBackupAttachesToARunningGuest(t *testing.T) {
	c := newCluster(t, "kv")
	// Every request twice, as a client sends it whose first reply was
	// late (on a slow host, around the attach's final stop): the guest
	// executes each twice, before and after the attach and the failovers.
	c.kv.twice = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, _, _ := c.alonePrimary(ctx) // the client talks to whoever is primary
	c.incr(t, 10)                      // alone: replies leave at once

	_, b2, done2, kill2 := c.attachBackup(first, "second")
	c.incr(t, 20)
	vmmtest.WaitUntil(t, "the second host in sync", func() bool { return b2.Stats.Applied.Load() > 0 })
	// The first primary dies: its engine stops, its link drops.
	c.cancelP()
	kill2()
	vmmtest.Closed(t, "the first primary's Run to return", c.pDone)
	r := vmmtest.Receive(t, "the second host to take over", done2)
	if r.err != nil {
		t.Fatalf("second host did not go live: %v", r.err)
	}
	second := r.live
	go func() { second.Run(ctx, nil) }()
	c.live = second
	c.incr(t, 10)

	_, b3, done3, kill3 := c.attachBackup(second, "third")
	c.incr(t, 20)
	vmmtest.WaitUntil(t, "the third host in sync", func() bool { return b3.Stats.Applied.Load() > 0 })
	cancel()
	kill3()
	r = vmmtest.Receive(t, "the third host to end", done3)
	if r.err != nil && !errors.Is(r.err, context.Canceled) {
		t.Fatalf("third host: %v", r.err)
	}
	checkKV(t, c.client.seen())
	if cur, err := c.arb.Current(context.Background()); err != nil || cur.Generation != 3 {
		t.Fatalf("witness holds %+v (%v), want generation 3 after two failovers", cur, err)
	}
}

// TestPrimaryLosesItsBackupThenTakesANewOne: the backup dies (not the
// primary); the primary wins the next generation and runs alone; a new
// backup attaches and the guest is protected again (the old link's
// failure must not count against the new one); then the primary dies
// and the new backup takes over.
func TestPrimaryLosesItsBackupThenTakesANewOne(t *testing.T) {
	c := newCluster(t, "kv")
	c.start()
	c.incr(t, 10)
	c.cancelB() // the backup host dies
	c.killLink()
	r := vmmtest.Receive(t, "the dead backup's Follow to return", c.bDone)
	if r.err == nil {
		t.Fatal("a dead backup went live")
	}
	c.incr(t, 10) // answered by the primary alone, after it won generation 2
	_, b2, done, kill := c.attachBackup(c.primary, "second-backup")
	c.incr(t, 20)
	vmmtest.WaitUntil(t, "the new backup in sync", func() bool { return b2.Stats.Applied.Load() > 0 })
	if n := c.primary.Stats.BackupsLost.Load(); n != 1 {
		t.Fatalf("the primary lost %d backups, want 1", n)
	}
	c.cancelP()
	kill()
	vmmtest.Closed(t, "the primary's Run to return", c.pDone)
	r = vmmtest.Receive(t, "the new backup to take over", done)
	if r.err != nil {
		t.Fatalf("the new backup did not go live: %v", r.err)
	}
	c.live = r.live
	c.runLive()
	c.incr(t, 10)
	checkKV(t, c.client.seen())
	if cur, err := c.arb.Current(context.Background()); err != nil || cur.Generation != 3 {
		t.Fatalf("witness holds %+v (%v), want generation 3", cur, err)
	}
}

// TestALateAckDuringTheContest: the backup falls silent (everything it
// sends is held on the way), so the primary contests the next generation,
// its fence suspended; while it waits for the witness, what the backup
// sent arrives, among it the ack of a reply the primary holds. Applying
// that ack would release the reply under the suspended fence, which
// refuses it and fails the output buffer for good: the primary, winning,
// would go on alone unable to emit anything. (On a loaded host, whose
// backup only seemed silent, the primary stopped answering so.)
func TestALateAckDuringTheContest(t *testing.T) {
	c := newCluster(t, "kv")
	// The silence is the test's doing; the backup's ack is among what is
	// held well before the primary gives up on it.
	c.cfg.FailureTimeout = time.Second
	var hold atomic.Bool
	release := make(chan struct{})
	c.down = holding(&hold, release)
	linkClosed := make(chan struct{}) // the primary closed its end
	c.up = func(from io.Reader, to io.Writer) { copyAll(from, to); close(linkClosed) }
	primaryDecided := make(chan struct{})
	c.arb = gateArbiter{Arbiter: c.arb,
		before: func(ctx context.Context, g uint64, owner string) {
			switch {
			case g != 2:
			case owner == "primary":
				// The backup's messages arrive now; the contest goes on
				// once the primary applied them (its output buffer
				// failed) or cannot (it closed the link first).
				close(release)
				for c.pOut.Err() == nil {
					select {
					case <-linkClosed:
						return
					case <-ctx.Done():
						return
					case <-time.After(time.Millisecond):
					}
				}
			case owner == "backup": // it contests once the link closes: after the primary
				select {
				case <-primaryDecided:
				case <-ctx.Done():
				}
			}
		},
		after: func(g uint64, owner string, err error) {
			if g == 2 && owner == "primary" {
				close(primaryDecided)
			}
		},
	}
	c.start()
	c.incr(t, 5)
	hold.Store(true)
	c.send() // its reply waits for an ack that is held
	vmmtest.WaitUntil(t, "the primary's contest", func() bool {
		select {
		case <-c.pDone:
			return true
		default:
			return c.primary.Stats.BackupsLost.Load() == 1
		}
	})
	if err := c.pOut.Err(); err != nil {
		t.Fatalf("the primary's output buffer failed: %v", err)
	}
	c.incr(t, 5) // answered by the primary alone, in generation 2
	if r := vmmtest.Receive(t, "the backup to decide", c.bDone); !errors.Is(r.err, witness.ErrLost) {
		t.Fatalf("the backup ended with %v, want a lost contest", r.err)
	}
	checkKV(t, c.client.seen())
}

// holding is a filter that passes messages until hold is set, then holds
// them (and what follows) until release closes.
func holding(hold *atomic.Bool, release <-chan struct{}) filter {
	return linktest.Frames(func(uint16, []byte) bool {
		if hold.Load() {
			<-release
		}
		return true
	})
}

// TestAStoppingPrimaryReleasesNothingLate: the primary stops while it
// holds a frame, and the backup's ack of it is held on the way until the
// backup, having read the whole log, went live and sent the frame again
// itself. The ack then reaches the primary, which reads on to the end of
// the stream: it must release nothing more (two hosts would emit, the old
// one after the new; on a host running one goroutine at a time the tick
// guest's client saw so a frame from the primary after the backup's).
func TestAStoppingPrimaryReleasesNothingLate(t *testing.T) {
	c := newCluster(t, "tick", tickParams...)
	var hold atomic.Bool
	release := make(chan struct{})
	c.down = holding(&hold, release)
	c.start()
	c.client.waitFrames(t, 5)
	emitted := func() uint64 { s := c.pOut.Stats(); return s.Released + uint64(s.HeldOutputs) }
	hold.Store(true)
	n := emitted()
	vmmtest.WaitUntil(t, "a frame whose ack is held", func() bool { return emitted() > n })
	go func() {
		r := <-c.bDone // the backup went live: the held ack may go
		c.bDone <- r
		close(release)
	}()
	c.stopPrimary()
	c.failover()
	sameMachine(t, c.pm, c.bm)
	frames := c.client.seen()
	live := false
	for i, f := range frames {
		if live = live || f.host == "backup"; live && f.host == "primary" {
			t.Fatalf("frame %d of %d is the stopped primary's, after the live backup's", i, len(frames))
		}
	}
	checkTicks(t, frames)
}

// gateArbiter is an Arbiter whose Acquire calls before first and after
// when the arbiter answered.
type gateArbiter struct {
	witness.Arbiter
	before func(ctx context.Context, g uint64, owner string)
	after  func(g uint64, owner string, err error)
}

func (a gateArbiter) Acquire(ctx context.Context, g uint64, owner string) (witness.Claim, error) {
	a.before(ctx, g, owner)
	c, err := a.Arbiter.Acquire(ctx, g, owner)
	a.after(g, owner, err)
	return c, err
}

// TestPartitionOneSideGoesOn cuts the link between a live primary and a
// live backup, 10 times at random moments under client traffic: both ask
// the witness for the next generation; exactly one goes on (the primary
// alone, or the backup live) and the other stops; the client's view is
// one machine's.
func TestPartitionOneSideGoesOn(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	winners := map[string]int{}
	for i := 0; i < 10; i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			c := newCluster(t, "kv")
			c.start()
			c.incr(t, 1+rng.Intn(30))
			c.send()                                                     // a request in flight
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond) // the random moment: the test's point
			c.killLink()
			r := vmmtest.Receive(t, "the backup to decide", c.bDone)
			cur, err := c.arb.Current(context.Background())
			if err != nil || cur.Generation != 2 {
				t.Fatalf("the witness holds %v (%v), want generation 2", cur, err)
			}
			if r.err == nil { // the backup went live: it won, and the primary halts
				if cur.Owner != "backup" {
					t.Fatalf("the backup went live, and generation 2 is %q's", cur.Owner)
				}
				vmmtest.Closed(t, "the primary that lost to stop", c.pDone)
				if !errors.Is(c.pErr, witness.ErrHalt) {
					t.Fatalf("the primary stopped with %v, want a halt", c.pErr)
				}
				winners["backup"]++
				c.live = r.live
				c.runLive()
			} else { // the backup stayed back: the primary won and goes on
				if !errors.Is(r.err, witness.ErrLost) {
					t.Fatalf("the backup stayed back with %v, want a lost contest", r.err)
				}
				if cur.Owner != "primary" {
					t.Fatalf("the backup stayed back, and generation 2 is %q's", cur.Owner)
				}
				winners["primary"]++
			}
			c.incr(t, 10)
			checkKV(t, c.client.seen())
			select {
			case <-c.pDone:
				if r.err != nil {
					t.Fatalf("the primary that won stopped: %v", c.pErr)
				}
			default:
			}
		})
	}
	t.Logf("winners: %v", winners)
}
