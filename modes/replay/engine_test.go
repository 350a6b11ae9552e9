package replay_test

import (
	"io"
	"math/rand"
	"strconv"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/replay/simvm"
)

// tickParams make the tick guest busy enough that its timer often fires
// while it computes, so interrupts land by signature, not only at HLT.
var tickParams = []simvm.Param{{Name: "period_ns", Value: 200_000}, {Name: "work", Value: 5_000}, {Name: "every", Value: 5}}

// incr drives the kv guest like a UDP client: it sends INCR and waits for
// a new reply, resending after a timeout. It returns when n replies came.
func (c *cluster) incr(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		have := len(c.client.seen())
		deadline := time.Now().Add(30 * time.Second)
		for len(c.client.seen()) == have {
			c.target().Receive(simvm.KVRequest("INCR", "k"))
			wait := time.Now().Add(50 * time.Millisecond)
			for len(c.client.seen()) == have && time.Now().Before(wait) {
				time.Sleep(200 * time.Microsecond)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no reply to INCR after %d replies", have)
			}
		}
	}
}

// checkKV checks what a kv client saw is one machine's output: reply
// numbers run on without a gap; a number seen twice (a repeat at the
// failover boundary, which replay mode allows) carries the same reply;
// and the INCR values rise by exactly one per reply.
func checkKV(t *testing.T, frames []frame) {
	t.Helper()
	bySeq := map[uint64]string{}
	var last simvm.KVReply
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
		if last.Seq != 0 {
			v, _ := strconv.ParseUint(r.Value, 10, 64)
			lv, _ := strconv.ParseUint(last.Value, 10, 64)
			if r.Seq != last.Seq+1 || v != lv+1 {
				t.Fatalf("reply %d (value %d) from %s follows reply %d (value %d): not one machine", r.Seq, v, f.host, last.Seq, lv)
			}
		}
		last = r
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
		t.Logf("primary: %s", st.PrimaryLine(time.Now().Add(-time.Second)))
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
			c.start()
			c.incr(t, 1+rng.Intn(60))
			// Crash while a request is in flight, at a random moment.
			c.target().Receive(simvm.KVRequest("INCR", "k"))
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
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
		// The backup's hello (an 8-byte frame header and 30 bytes) passes;
		// everything after it, acks and heartbeats, waits.
		if _, err := io.CopyN(to, from, 8+30); err != nil {
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
