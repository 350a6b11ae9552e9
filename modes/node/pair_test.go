package node_test

import (
	"context"
	"errors"
	"math/rand"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// Pairs of nodes in this process (modes/node/nodetest): the kv guest
// replicated in both modes, its UDP client's view across failovers, and the
// link between the nodes cut or silenced.

var modes = []node.Mode{node.ModeCheckpoint, node.ModeReplay}

// kvOptions are a pair's options for the kv guest on machine in mode,
// with a disk, journalling every update and flushing before its reply.
func kvOptions(t *testing.T, mode node.Mode, machine node.Machine) node.Options {
	o := nodetest.Options(t, mode, machine, "kv")
	o.Params = map[string]string{"journal": "1000", "flush": "1"}
	if o.Disk == "" { // KVM's kv guest has none by default
		o.Disk, o.DiskSize = filepath.Join(t.TempDir(), "disk.img"), 1<<20
	}
	if machine == node.MachineKVM && mode == node.ModeCheckpoint {
		o.VCPUs = 2
	}
	return o
}

// TestFailoverAtRandomMoments crashes the primary of the software
// machine's kv guest at random moments, a request in flight, 5 times in
// each mode: each time the backup goes live with the next generation, the
// client's replies stay one machine's and its counters go on, and the disk
// holds every update a reply reported.
func TestFailoverAtRandomMoments(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			seed := time.Now().UnixNano()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewSource(seed))
			for i := range 5 {
				t.Run(strconv.Itoa(i), func(t *testing.T) {
					crashUnderLoad(t, rng, kvOptions(t, mode, node.MachineSim))
				})
			}
		})
	}
}

// TestKVMFailoverKeepsTheCounter is TestFailoverAtRandomMoments with the C
// kv guest on KVM (two vCPUs in checkpoint mode), twice in each mode.
func TestKVMFailoverKeepsTheCounter(t *testing.T) {
	vmmtest.RequireKVM(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			seed := time.Now().UnixNano()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewSource(seed))
			for i := range 2 {
				t.Run(strconv.Itoa(i), func(t *testing.T) {
					crashUnderLoad(t, rng, kvOptions(t, mode, node.MachineKVM))
				})
			}
		})
	}
}

// crashUnderLoad runs a pair of o's nodes, crashes the primary at a random
// moment under the client's requests, and checks the failover.
func crashUnderLoad(t *testing.T, rng *rand.Rand, o node.Options) {
	p := nodetest.Start(t, o)
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	for n := 1 + rng.Intn(30); n > 0; n-- {
		c.Incr()
	}
	c.Send()                                                     // a request in flight (Incr sends it again)
	time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond) // a random moment to crash at: the test's point
	crashAndFailOver(t, p, c)
	t.Logf("%d requests, %d replies; crashed after %d", c.Requests(), c.LastSeq(), c.Requests()-6)
}

// crashAndFailOver crashes p's primary (generation 1) under c: c's
// request in flight goes again soon (its reply may have died with the
// primary), then 5 more; the backup must have answered them live, with
// generation 2 at the witness, and the disk hold every update a reply
// reported.
func crashAndFailOver(t *testing.T, p *nodetest.Pair, c *nodetest.KVClient) {
	t.Helper()
	p.CrashPrimary()
	c.Resend = 100 * time.Millisecond
	c.Incr()
	c.Resend = 0
	for range 5 {
		c.Incr()
	}
	if !p.IsLive() {
		t.Fatal("the client was answered after the crash, and the backup is not live")
	}
	if who, gen := p.Holder(); who != "backup" || gen != 2 {
		t.Fatalf("the witness's generation %d is the %s's, want generation 2 the backup's", gen, who)
	}
	nodetest.CheckJournal(t, p.Options.Disk, p.Options.Machine, c.LastSeq())
}

// TestStoppedPrimaryHandsOver stops the primary (SIGTERM, not a crash) in
// each mode: the backup goes live where the primary stopped and the
// client's counters go on. In replay mode the backup replays the whole log
// first, so not a reply is lost. In checkpoint mode the stop comes with a
// reply held (long epochs): the primary hands the guest over as ftckpt ctl
// failover does, releasing every output, so that reply comes without the
// request being sent again.
func TestStoppedPrimaryHandsOver(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			// The failure timeout is nodetest's, 10 s: a stopping replay
			// primary holds the guest's network port until its backup
			// closes the link (or for that long), and the backup, which
			// waits 5 s for the port as it goes live, closes the link as
			// soon as the stream ends.
			o := kvOptions(t, mode, node.MachineSim)
			o.Checkpoint.Epoch = 200 * time.Millisecond
			o.HandOverOnStop = true // as ftckpt --role primary sets it
			p := nodetest.Start(t, o)
			c := nodetest.NewKVClient(t, p.Addr(), mode)
			p.WaitInSync()
			c.Incr() // the guest is up
			// No request is sent twice from here: a second reply, held,
			// would stand for the request in flight at the stop (below),
			// which the stop could then catch before the guest has it.
			c.Resend = 30 * time.Second
			for range 9 {
				c.Incr()
			}
			if mode == node.ModeReplay {
				if err := p.StopPrimary(); !errors.Is(err, context.Canceled) {
					t.Fatalf("the stopped primary ended with %v", err)
				}
			} else {
				c.Send()
				// An output the backup has not acknowledged: the guest has
				// the request. Not one committed: the last reply is counted
				// held until its release pass takes it off the queue, after
				// the client may have it, and a stop then could catch this
				// request on its way to the guest.
				vmmtest.WaitUntil(t, "the reply held", func() bool {
					s := p.Primary.Parts().Outputs.Stats()
					return s.HeldOutputs > 0 && (!s.AnyCommitted || s.OldestHeld > s.Committed)
				})
				if err := p.StopPrimary(); !errors.Is(err, node.ErrHandedOver) {
					t.Fatalf("the stopped primary ended with %v, want ErrHandedOver", err)
				}
				if s := p.Primary.Parts().Outputs.Stats(); s.HeldOutputs != 0 || s.Dropped != 0 || s.Failed != nil {
					t.Fatalf("the stopped primary's outputs: %d held, %d dropped, failed %v", s.HeldOutputs, s.Dropped, s.Failed)
				}
				if !c.Await(10 * time.Second) {
					t.Fatal("the reply held when the primary was stopped never came")
				}
			}
			p.WaitLive()
			if who, gen := p.Holder(); who != "backup" || gen != 2 {
				t.Fatalf("generation %d is the %s's, want generation 2 the backup's", gen, who)
			}
			c.Resend = 100 * time.Millisecond
			for range 5 {
				c.Incr()
			}
			nodetest.CheckJournal(t, p.Options.Disk, o.Machine, c.LastSeq())
		})
	}
}

// TestOneSideGoesOn breaks the link between a running primary and its
// backup, in each mode, under the client's requests: cut (both see it
// reset), silenced both ways (each finds the other silent), or by the
// backup's death. Both may contest the next generation; exactly one goes
// on — the primary alone or the backup live — and the other stops (a
// primary halts, a backup stays back); the client's replies stay one
// machine's.
func TestOneSideGoesOn(t *testing.T) {
	for _, mode := range modes {
		for _, fault := range []string{"cut", "silence", "backup dies"} {
			t.Run(mode.String()+"/"+fault, func(t *testing.T) {
				o := kvOptions(t, mode, node.MachineSim)
				if fault == "silence" {
					// The silence this test makes is found after this.
					o.Checkpoint.FailureTimeout, o.Replay.FailureTimeout = 300*time.Millisecond, 500*time.Millisecond
				}
				p := nodetest.Start(t, o)
				c := nodetest.NewKVClient(t, p.Addr(), mode)
				p.WaitInSync()
				for range 10 {
					c.Incr()
				}
				c.Send() // a request in flight
				switch fault {
				case "cut":
					p.Link.Cut()
				case "silence":
					p.Link.Partition()
				case "backup dies":
					p.StopBackup()
				}
				var winner string
				vmmtest.WaitUntil(t, "a side to win generation 2", func() bool {
					who, gen := p.Holder()
					winner = who
					return gen == 2
				})
				switch winner {
				case "primary":
					if fault != "backup dies" {
						waitStayedBack(t, p, mode)
					}
				case "backup":
					if fault == "backup dies" {
						t.Fatal("a dead backup won the generation")
					}
					p.WaitLive()
					vmmtest.Closed(t, "the primary that lost to halt", p.Primary.Done())
					if err := p.Primary.Wait(); !nodetest.IsHalt(err) {
						t.Fatalf("the primary that lost ended with %v, want a halt", err)
					}
				default:
					t.Fatalf("generation 2 is held by %q", winner)
				}
				c.Resend = 100 * time.Millisecond
				c.Incr()
				c.Resend = 0
				for range 5 {
					c.Incr()
				}
				if winner == "primary" && p.IsLive() {
					t.Fatal("both sides went on")
				}
				t.Logf("%s won", winner)
			})
		}
	}
}

// waitStayedBack waits until the backup, having lost the contest, stays
// back: a checkpoint-mode backup waits for another primary, a replay-mode
// backup node ends with the lost contest.
func waitStayedBack(t *testing.T, p *nodetest.Pair, mode node.Mode) {
	t.Helper()
	if mode == node.ModeCheckpoint {
		vmmtest.WaitUntil(t, "the backup to stay back", func() bool {
			return p.Log.Has("backup", "another candidate won; staying backup")
		})
		return
	}
	vmmtest.Closed(t, "the backup that lost to end", p.Backup.Done())
	if err := p.Backup.Wait(); !errors.Is(err, witness.ErrLost) {
		t.Fatalf("the backup that lost ended with %v, want a lost contest", err)
	}
}

// TestRespawnReplacesABackupThatDiesBeforeJoining: a primary alone with
// Respawn whose backups all die at once, before they join, starts another
// each respawnEvery for as long as its guest runs unprotected (not only at
// its next loss, which never comes), in both modes.
func TestRespawnReplacesABackupThatDiesBeforeJoining(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			o := nodetest.Options(t, mode, node.MachineSim, "kv")
			o.Role, o.Peer, o.AcceptBackups = node.RolePrimary, "", "127.0.0.1:0"
			o.Control = ""
			started := make(chan struct{}, 16)
			o.Respawn = func(string) (node.Backup, error) {
				dead := make(chan struct{})
				close(dead)
				started <- struct{}{}
				return node.Backup{Addr: "", Exited: dead, Stop: func(time.Duration) {}}, nil
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			n, err := node.Start(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 3; i++ {
				vmmtest.Receive(t, "backup "+strconv.Itoa(i)+" started", started)
			}
			cancel()
			n.Wait()
		})
	}
}
