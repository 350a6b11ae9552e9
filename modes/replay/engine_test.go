package replay_test

import (
	"context"
	"errors"
	"io"
	"math/rand"
	"net"
	"strconv"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/modes/replay/simvm"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/witness"
)

// tickParams make the tick guest busy enough that its timer often fires
// while it computes, so interrupts land by signature, not only at HLT.
var tickParams = []simvm.Param{{Name: "period_ns", Value: 200_000}, {Name: "work", Value: 5_000}, {Name: "every", Value: 5}}

// kvKeys are the keys the client increments in turn. Distinct requests
// matter: if an output left before the backup had the log, the backup's
// machine would answer the client's next request with a reply number it
// already used, for another key's value — one number, two contents.
var kvKeys = []string{"a", "b", "c"}

// kvState is what the kv client of a cluster knows.
type kvState struct {
	sent     int               // requests answered so far
	attempts int               // sends of the request being made
	maxSeq   uint64            // highest reply number seen
	scanned  int               // frames examined
	values   map[string]uint64 // the last value of each key
	// prevKey is the last answered request's key; prevRetried says it was
	// sent more than once, so it may have been executed twice (UDP
	// clients retry: at least once).
	prevKey     string
	prevRetried bool
}

// send sends the request being made (again).
func (c *cluster) send() {
	c.kv.attempts++
	c.target().Receive(simvm.KVRequest("INCR", kvKeys[c.kv.sent%len(kvKeys)]))
}

// incr drives the kv guest like a UDP client: n times, it sends INCR of
// the next key and resends after a timeout until a new reply (a reply
// number not seen before) comes, checking each key counts up by one (or,
// for a request it had to resend, by one more: its first send may have
// been executed too).
func (c *cluster) incr(t *testing.T, n int) {
	t.Helper()
	kv := &c.kv
	if kv.values == nil {
		kv.values = map[string]uint64{}
	}
	for i := 0; i < n; i++ {
		key := kvKeys[kv.sent%len(kvKeys)]
		deadline := time.Now().Add(30 * time.Second)
		for answered := false; !answered; {
			c.send()
			wait := time.Now().Add(50 * time.Millisecond)
			for !answered && time.Now().Before(wait) {
				frames := c.client.seen()
				for ; kv.scanned < len(frames) && !answered; kv.scanned++ {
					r, err := simvm.ParseKVReply(frames[kv.scanned].data)
					if err != nil || r.Seq <= kv.maxSeq {
						continue // checkKV judges it
					}
					kv.maxSeq = r.Seq
					v, _ := strconv.ParseUint(r.Value, 10, 64)
					switch {
					case v == kv.values[key]+1:
						answered = true
						kv.values[key] = v
					case kv.prevRetried && v == kv.values[kv.prevKey]+1:
						kv.values[kv.prevKey] = v // the retried request, executed twice
					default:
						t.Fatalf("INCR %s answered %q after value %d", key, frames[kv.scanned].data, kv.values[key])
					}
				}
				time.Sleep(200 * time.Microsecond)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no reply to INCR %s after %d requests", key, kv.sent)
			}
		}
		kv.prevKey, kv.prevRetried = key, kv.attempts > 1
		kv.sent, kv.attempts = kv.sent+1, 0
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
		r, err := simvm.ParseKVReply(f.data)
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
	var last simvm.TickFrame
	sent := map[string]bool{}
	for i, f := range frames {
		tf, err := simvm.ParseTickFrame(f.data)
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
			c.up = delayed(2 * time.Millisecond) // a log in flight for a while
			c.start()
			c.incr(t, 1+rng.Intn(60))
			// Crash while a request is in flight (incr sends it again),
			// at a random moment.
			c.send()
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
			c.crashPrimary()
			c.failover()
			c.runLive()
			c.incr(t, 20)
			checkKV(t, c.client.seen())
		})
	}
}

// delayed is a filter that delivers each chunk d after it was read: a link
// with latency, whose data in flight dies with the link.
func delayed(d time.Duration) filter {
	return func(from io.Reader, to io.Writer) {
		type chunk struct {
			at   time.Time
			data []byte
		}
		q := make(chan chunk, 1024)
		go func() {
			defer close(q)
			buf := make([]byte, 64<<10)
			for {
				n, err := from.Read(buf)
				if n > 0 {
					q <- chunk{time.Now().Add(d), append([]byte(nil), buf[:n]...)}
				}
				if err != nil {
					return
				}
			}
		}()
		for c := range q {
			time.Sleep(time.Until(c.at))
			if _, err := to.Write(c.data); err != nil {
				return
			}
		}
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
	for i := 0; i < 20; i++ {
		c.primary.Receive(simvm.KVRequest("INCR", "k"))
		time.Sleep(time.Millisecond)
	}
	deadline := time.Now().Add(time.Second)
	for c.primary.Stats.Exits.Load() < 100 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := len(c.client.seen()); n != 0 {
		t.Fatalf("%d replies left the primary with no ack from the backup", n)
	}
	if c.primary.Stats.Exits.Load() == 0 {
		t.Fatal("the guest did not run")
	}
	close(release)
	c.client.waitFrames(t, 1)
	checkKV(t, c.client.seen())
}

// attachBackup starts a new backup host and attaches it to p, a primary
// running alone; it returns the backup, what its Follow returns, and a
// func that kills p's link to it.
func (c *cluster) attachBackup(p *replay.Primary, name string) (*simvm.Machine, *replay.Backup, chan followResult, func()) {
	t := c.t
	fence := witness.NewFence(c.arb, name)
	plug := &replay.Plug{}
	m, err := simvm.New(c.guest, c.pages, plug, c.params...)
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
	a, bconn := tcpPair(t)
	done := make(chan followResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		live, err := b.Follow(ctx, bconn)
		done <- followResult{live, err}
	}()
	pa := a
	if c.up != nil || c.down != nil {
		pa = c.proxy(a) // the test's filters on this link too
	}
	if err := p.Attach(pa); err != nil {
		t.Fatal(err)
	}
	return m, b, done, func() { pa.Close(); a.Close(); bconn.Close() }
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestBackupAttachesToARunningGuest is the paper's FT VMotion and
// re-protection: a primary that started alone gets a backup from a full
// checkpoint of its running guest; after that primary dies and the backup
// takes over, the backup in turn gets a new backup, and takes that over
// too. The client's view stays one machine's throughout, and the
// generation rises by one at each failover.
func TestBackupAttachesToARunningGuest(t *testing.T) {
	c := newCluster(t, "kv")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, _, _ := c.alonePrimary(ctx) // the client talks to whoever is primary
	c.incr(t, 10)                      // alone: replies leave at once

	_, _, done2, kill2 := c.attachBackup(first, "second")
	c.incr(t, 20)
	// The first primary dies: its engine stops, its link drops.
	c.cancelP()
	kill2()
	<-c.pDone
	r := <-done2
	if r.err != nil {
		t.Fatalf("second host did not go live: %v", r.err)
	}
	second := r.live
	go func() { second.Run(ctx, nil) }()
	c.live = second
	c.incr(t, 10)

	_, _, done3, kill3 := c.attachBackup(second, "third")
	c.incr(t, 20)
	cancel()
	kill3()
	r = <-done3
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
	r := <-c.bDone
	if r.err == nil {
		t.Fatal("a dead backup went live")
	}
	c.incr(t, 10) // answered by the primary alone, after it won generation 2
	_, _, done, kill := c.attachBackup(c.primary, "second-backup")
	c.incr(t, 20)
	if n := c.primary.Stats.BackupsLost.Load(); n != 1 {
		t.Fatalf("the primary lost %d backups, want 1", n)
	}
	c.cancelP()
	kill()
	<-c.pDone
	r = <-done
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
			c.send() // a request in flight
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
			c.killLink()
			var r followResult
			select {
			case r = <-c.bDone:
			case <-time.After(30 * time.Second):
				t.Fatal("the backup never decided")
			}
			primaryOn := !waitClosed(c.pDone, time.Second)
			switch {
			case r.err == nil && primaryOn:
				t.Fatal("both sides went on")
			case r.err == nil:
				if !errors.Is(c.pErr, witness.ErrHalt) {
					t.Fatalf("the primary stopped with %v, want a halt", c.pErr)
				}
				winners["backup"]++
				c.live = r.live
				c.runLive()
			case primaryOn:
				if !errors.Is(r.err, witness.ErrLost) {
					t.Fatalf("the backup stayed back with %v, want a lost contest", r.err)
				}
				winners["primary"]++
			default:
				t.Fatalf("neither side went on: primary %v, backup %v", c.pErr, r.err)
			}
			c.incr(t, 10)
			checkKV(t, c.client.seen())
		})
	}
	t.Logf("winners: %v", winners)
}

// waitClosed reports whether ch closed within d.
func waitClosed(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}
