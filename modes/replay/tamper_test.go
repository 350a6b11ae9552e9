package replay_test

import (
	"io"
	"sync/atomic"
	"testing"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// tamper returns a primary→backup filter that re-frames every message and
// lets edit change one log batch (re-encoded, with a valid checksum, so
// only the backup's checks against its own execution can notice). edit
// reports whether it changed the batch; it is asked until it does.
func tamper(edited *atomic.Bool, edit func(b *replay.Batch) bool) filter {
	return func(from io.Reader, to io.Writer) {
		r := format.NewReader(from, 0)
		var b replay.Batch
		for {
			t, payload, err := r.Next()
			if err != nil {
				return
			}
			if t == format.MsgLog && !edited.Load() && replay.DecodeBatch(payload, &b) == nil && edit(&b) {
				edited.Store(true)
				payload = b.Encode()
			}
			if format.WriteMessage(to, t, payload) != nil {
				return
			}
		}
	}
}

// flipValue returns a tamper filter that flips a bit of the first value
// the guest read (an EntryValue) in the first batch for which ready holds:
// a divergence the backup finds as it replays it.
func flipValue(edited *atomic.Bool, ready func(b *replay.Batch) bool) filter {
	return tamper(edited, func(b *replay.Batch) bool {
		if !ready(b) {
			return false
		}
		for i := range b.Entries {
			if e := &b.Entries[i]; e.Type == replay.EntryValue {
				e.Exit.Data[0] ^= 1
				return true
			}
		}
		return false
	})
}

// corrupt returns a filter that flips a bit in the n-th message of type
// kind.
func corrupt(kind format.MsgType, n int) filter {
	seen := 0
	return linktest.Frames(func(typ uint16, payload []byte) bool {
		if format.MsgType(typ) == kind {
			if seen++; seen == n {
				payload[len(payload)/2] ^= 0x10
			}
		}
		return true
	})
}

// TestTamperedLogIsDetectedAndResynchronised changes one entry of each
// kind that feeds the guest, in flight and with a valid checksum: the
// backup must notice the divergence, ask for a full checkpoint, and end
// in the primary's state; the client sees only the primary's outputs.
func TestTamperedLogIsDetectedAndResynchronised(t *testing.T) {
	cases := []struct {
		name  string
		guest string
		edit  func(e *replay.Entry) bool
	}{
		{"clock reading", "tick", func(e *replay.Entry) bool {
			if e.Type != replay.EntryTime {
				return false
			}
			e.Time += 1000
			return true
		}},
		{"read value", "kv", func(e *replay.Entry) bool {
			if e.Type != replay.EntryValue {
				return false
			}
			e.Exit.Data[0] ^= 1
			return true
		}},
		{"received frame", "kv", func(e *replay.Entry) bool {
			if e.Type != replay.EntryFrame || len(e.Bytes) == 0 {
				return false
			}
			e.Bytes = append([]byte(nil), e.Bytes...)
			e.Bytes[len(e.Bytes)-1] = 'x' // INCR k → INCR x
			return true
		}},
		{"landing", "tick", func(e *replay.Entry) bool {
			if e.Type != replay.EntryLanding {
				return false
			}
			e.Sig.Regs ^= 1
			return true
		}},
		{"timer poll", "tick", func(e *replay.Entry) bool {
			if e.Type != replay.EntryPoll {
				return false
			}
			e.Time += 1 << 30
			return true
		}},
		{"exit address", "kv", func(e *replay.Entry) bool {
			if e.Type != replay.EntryExit || !e.Exit.Kind.IsIO() {
				return false
			}
			e.Exit.Addr++
			return true
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, tc.guest, paramsFor(tc.guest)...)
			c.cfg.MaxLandingHits = 1 << 18
			var edited atomic.Bool
			seen := 0
			c.up = tamper(&edited, func(b *replay.Batch) bool {
				for i := range b.Entries {
					// The fourth candidate: the backup is running by then.
					if probe := b.Entries[i]; tc.edit(&probe) {
						if seen++; seen == 4 {
							b.Entries[i] = probe
							return true
						}
					}
				}
				return false
			})
			c.start()
			drive(t, c, tc.guest, func() bool { return edited.Load() && c.backup.Stats.Applied.Load() >= 2 })
			c.stopPrimary()
			c.failover()
			sameMachine(t, c.pm, c.bm)
			if c.backup.Stats.Divergences.Load() == 0 {
				t.Fatal("the tampered entry went unnoticed")
			}
			checkOutputs(t, tc.guest, c.client.seen())
		})
	}
}

// TestCorruptMessagesAreRejectedAndResynchronised flips a bit in one
// message: a log batch (a gap), the batch that carries the first sync
// entry (the gap swallows the sync the backup was waiting for), or a full
// checkpoint. Each time the backup rejects it, gets a new full checkpoint,
// and ends in the primary's state.
func TestCorruptMessagesAreRejectedAndResynchronised(t *testing.T) {
	for _, tc := range []struct {
		name string
		kind format.MsgType
		n    int
	}{
		{"a batch", format.MsgLog, 5},
		{"the batch of the first sync", format.MsgLog, 1},
		{"the first checkpoint", format.MsgCheckpoint, 1},
		{"a later checkpoint", format.MsgCheckpoint, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, "kv")
			c.up = corrupt(tc.kind, tc.n)
			if tc.n == 2 { // a second checkpoint needs a reason: a divergence
				var edited atomic.Bool
				up := flipValue(&edited, func(b *replay.Batch) bool { return b.First > 20 })
				c.up = chain(up, corrupt(tc.kind, tc.n))
			}
			c.start()
			drive(t, c, "kv", func() bool { return c.primary.Stats.Syncs.Load() >= 2 && c.primary.InSync() })
			c.incr(t, 10)
			c.handOverAndCheck(t, "kv")
		})
	}
}

// TestDivergenceResyncsWhileTheGuestRuns: the backup diverges, and its
// full checkpoint comes by pre-copy while the guest runs. With the rounds
// held on the way, the primary — which the backup no longer protects —
// answers its client (a stop-and-copy resync would hold every reply until
// the backup acknowledged it) and does not say it is in sync; once they go
// through it is in sync again, and the backup takes over in the primary's
// state.
func TestDivergenceResyncsWhileTheGuestRuns(t *testing.T) {
	c, release := divergeAndHoldTheResync(t, newCluster(t, "kv"))
	c.incr(t, 5)
	if c.primary.InSync() {
		t.Error("the primary says it is in sync while the backup's full checkpoint is held on the way")
	}
	close(release)
	drive(t, c, "kv", c.primary.InSync)
	if n := c.primary.Stats.Precopied.Load(); n == 0 {
		t.Error("no page went by pre-copy: the resync stopped the guest to copy it all")
	}
	c.incr(t, 5)
	c.handOverAndCheck(t, "kv")
}

// TestPrimaryDiesDuringAPrecopyResync: the primary releases the guest's
// outputs while it pre-copies a diverged backup's full checkpoint, so that
// backup must not go live until it has committed it: the primary dies with
// the rounds held on the way, and the backup does not take over (from its
// state before the divergence it would contradict the replies the client
// saw).
func TestPrimaryDiesDuringAPrecopyResync(t *testing.T) {
	c, release := divergeAndHoldTheResync(t, newCluster(t, "kv"))
	c.incr(t, 5)
	c.crashPrimary()
	close(release)
	if r := vmmtest.Receive(t, "the backup's Follow to return", c.bDone); r.err == nil || r.live != nil {
		t.Fatalf("the backup went live (%v) from a state older than the replies the client saw", r.err)
	}
	checkKV(t, c.client.seen())
}

// TestStopDuringAPrecopyResyncHandsOver: the primary is stopped (as by
// SIGTERM) while it pre-copies a diverged backup's full checkpoint: the
// rest of it goes in the primary's last stop, and the backup takes over
// in the primary's state.
func TestStopDuringAPrecopyResyncHandsOver(t *testing.T) {
	c, release := divergeAndHoldTheResync(t, newCluster(t, "kv"))
	c.incr(t, 5)
	time.AfterFunc(50*time.Millisecond, func() { close(release) }) // the stop's last messages wait for it
	c.handOverAndCheck(t, "kv")
}

// divergeAndHoldTheResync starts c, a pair of the kv guest, whose backup
// diverges (a value in the log changed in flight), and drives the guest
// until the first message of its resync reaches the primary→backup path,
// which holds it, and all after it, until release closes.
func divergeAndHoldTheResync(t *testing.T, c *cluster) (_ *cluster, release chan struct{}) {
	var edited atomic.Bool
	diverge := flipValue(&edited, func(b *replay.Batch) bool { return b.First > 20 })
	var held atomic.Bool
	release = make(chan struct{})
	checkpoints := 0
	holdResync := linktest.Frames(func(typ uint16, _ []byte) bool {
		if format.MsgType(typ) == format.MsgCheckpoint {
			if checkpoints++; checkpoints == 2 { // the first is the backup's first sync
				held.Store(true)
				<-release
			}
		}
		return true
	})
	c.up = chain(diverge, holdResync)
	c.start()
	drive(t, c, "kv", held.Load)
	return c, release
}

// chain runs filters one after the other on a byte path.
func chain(a, b filter) filter {
	return func(from io.Reader, to io.Writer) {
		pr, pw := io.Pipe()
		go func() { a(from, pw); pw.Close() }()
		b(pr, to)
	}
}

func paramsFor(guest string) []sim.Param {
	if guest == "tick" {
		return tickParams
	}
	return nil
}

// drive gives the guest work until done says enough.
func drive(t *testing.T, c *cluster, guest string, done func() bool) {
	t.Helper()
	for i := 0; !done(); i++ {
		if i > 2000 {
			t.Fatal("the backup never resynchronised")
		}
		if guest == "kv" {
			c.incr(t, 5)
		} else {
			c.client.waitFrames(t, len(c.client.seen())+2)
		}
	}
}

func checkOutputs(t *testing.T, guest string, frames []frame) {
	t.Helper()
	if guest == "kv" {
		checkKV(t, frames)
	} else {
		checkTicks(t, frames)
	}
}

// stallAt returns a filter that, at the n-th message of type kind, stops
// forwarding anything and closes reached.
func stallAt(kind format.MsgType, n int, reached chan<- struct{}) filter {
	return func(from io.Reader, to io.Writer) {
		r := format.NewReader(from, 0)
		for seen := 0; ; {
			t, payload, err := r.Next()
			if err != nil {
				return
			}
			if t == kind {
				if seen++; seen == n {
					close(reached)
					io.Copy(io.Discard, from)
					return
				}
			}
			if format.WriteMessage(to, t, payload) != nil {
				return
			}
		}
	}
}

// TestPrimaryDiesBeforeTheResyncCheckpoint: a batch is lost (a gap), the
// backup asks for a full checkpoint, and the primary dies after sending
// the sync entry but before its checkpoint arrives. The backup still has
// the guest as of just before the gap, and the primary released nothing
// after it: the backup takes over from there.
func TestPrimaryDiesBeforeTheResyncCheckpoint(t *testing.T) {
	c := newCluster(t, "kv")
	reached := make(chan struct{})
	c.up = chain(corrupt(format.MsgLog, 5), stallAt(format.MsgCheckpoint, 2, reached))
	c.start()
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-reached
		c.crashPrimary()
	}()
	for traffic := time.NewTicker(time.Millisecond); ; {
		select {
		case <-traffic.C:
			c.primary.Receive(sim.KVRequest("INCR", "a"))
			continue
		case <-done:
			traffic.Stop()
		}
		break
	}
	c.failover()
	checkKV(t, c.client.seen())
}
