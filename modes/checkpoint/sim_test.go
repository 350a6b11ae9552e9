package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
)

// The engine on the software machine (vmm/sim): its kv guest, replicated.

func newSimKV(t *testing.T, devs sim.Devices) *sim.CheckpointGuest {
	t.Helper()
	g, err := sim.NewCheckpointGuest("kv", 64, devs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g
}

// TestReplicatedByCheckpointMode runs the kv guest under checkpoint mode's
// engine (modes/checkpoint) on loopback TCP with a disk-lease witness, and
// crashes the primary at random moments under client load: the backup's
// sim.CheckpointGuest goes live from the last committed epoch, and the
// client's replies stay one machine's — each INCR's value is its reply
// number, numbers only rise, none repeats (an unreleased reply lost with
// the primary is a packet lost on the network: the client resends).
func TestReplicatedByCheckpointMode(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 5; i++ {
		t.Run(strconv.Itoa(i), func(t *testing.T) { replicatedRun(t, rng) })
	}
}

func replicatedRun(t *testing.T, rng *rand.Rand) {
	ctx := context.Background()
	cfg := DefaultConfig()
	cfg.Epoch, cfg.Heartbeat, cfg.FailureTimeout, cfg.Verify = 2*time.Millisecond, 20*time.Millisecond, 300*time.Millisecond, true
	arb, err := witness.Open("disk:" + filepath.Join(t.TempDir(), "lease"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { arb.Close() })
	pf, bf := witness.NewFence(arb, "primary"), witness.NewFence(arb, "backup")
	if _, err := pf.Acquire(ctx, 1); err != nil {
		t.Fatal(err)
	}

	// What the client saw, from either host; the primary's NIC can be cut.
	var mu sync.Mutex
	var replies [][]byte
	var dead atomic.Bool
	see := func(f []byte) {
		mu.Lock()
		replies = append(replies, bytes.Clone(f))
		mu.Unlock()
	}
	seen := func() int { mu.Lock(); defer mu.Unlock(); return len(replies) }
	nic := sinkFunc(func(f []byte) error {
		if !dead.Load() {
			see(f)
		}
		return nil
	})

	var primary *Primary
	disk := vmmtest.NewMemDisk(1 << 20)
	held := NewHeldDisk(disk, func() uint64 { return primary.Position() })
	out, err := outbuf.New(outbuf.DefaultConfig(), outbuf.Env{Generation: 1, Fence: pf, Net: nic, Disk: held.Sink(), Clock: outbuf.SystemClock{}})
	if err != nil {
		t.Fatal(err)
	}
	held.Attach(out)
	pg := newSimKV(t, heldDevices{out: out, disk: held, pos: func() uint64 { return primary.Position() }})
	held.SetPoll(pg.Poke)
	if primary, err = NewPrimary(cfg, pg, out, pf, 1, quietLog); err != nil {
		t.Fatal(err)
	}
	primary.SetDisk(held)
	bg := newSimKV(t, liveDevices{send: see, disk: disk})
	backup, err := NewBackup(cfg, bg, bf, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	backup.SetDisk(disk)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	bDone := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			bDone <- err
			return
		}
		bDone <- backup.Receive(ctx, conn)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	pctx, crash := context.WithCancel(ctx)
	pDone := make(chan error, 1)
	go func() { pDone <- primary.Run(pctx, conn) }()

	// The client sends INCR k and resends until a reply comes, to
	// whichever host is live.
	var target atomic.Pointer[sim.CheckpointGuest]
	target.Store(pg)
	incr := func(n int) {
		for i := 0; i < n; i++ {
			have := seen()
			deadline := time.Now().Add(20 * time.Second)
			for seen() == have {
				if time.Now().After(deadline) {
					t.Fatalf("no reply after %d", have)
				}
				target.Load().Receive(sim.KVRequest("INCR", "k"))
				wait := time.Now().Add(50 * time.Millisecond)
				for seen() == have && time.Now().Before(wait) {
					time.Sleep(100 * time.Microsecond)
				}
			}
		}
	}
	incr(1 + rng.Intn(40))
	pg.Receive(sim.KVRequest("INCR", "k"))
	time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
	dead.Store(true) // the primary's host dies: NIC, engine, guest, link
	crash()
	pg.Close()
	if err := <-pDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("crashed primary's Run: %v", err)
	}
	select {
	case err := <-bDone:
		t.Logf("backup's link: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the backup never noticed the primary's death")
	}
	if _, err := backup.GoLive(ctx); err != nil {
		t.Fatal(err)
	}
	target.Store(bg)
	incr(10)

	mu.Lock()
	defer mu.Unlock()
	var last uint64
	for i, f := range replies {
		r, err := sim.ParseKVReply(f)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != "VALUE" || r.Value != strconv.FormatUint(r.Seq, 10) || r.Seq <= last {
			t.Fatalf("reply %d %q after reply number %d: not one machine", i, f, last)
		}
		last = r.Seq
	}
}

var quietLog = slog.New(slog.DiscardHandler)

// heldDevices are a checkpoint-mode primary's: outputs held at the
// primary's position, refused (never waited for) when the buffer is full.
type heldDevices struct {
	out  *outbuf.Buffer
	disk *HeldDisk
	pos  func() uint64
}

var refused = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

func (h heldDevices) SendFrame(f []byte) error {
	err := h.out.Hold(refused, h.pos(), outbuf.NetFrame(f))
	if errors.Is(err, context.Canceled) {
		return vmm.ErrOutputFull
	}
	return err
}

func (h heldDevices) ReadDisk(p []byte, off int64) error {
	_, err := h.disk.ReadAt(p, off)
	return err
}

func (h heldDevices) WriteDisk(p []byte, off int64) error {
	_, err := h.disk.WriteAt(p, off)
	return err
}

func (h heldDevices) Console([]byte) {}

// liveDevices are a live backup's: frames to the client, the shared disk.
type liveDevices struct {
	send func([]byte)
	disk *vmmtest.MemDisk
}

func (l liveDevices) SendFrame(f []byte) error { l.send(f); return nil }

func (l liveDevices) Console([]byte) {}

func (l liveDevices) ReadDisk(p []byte, off int64) error {
	_, err := l.disk.ReadAt(p, off)
	return err
}

func (l liveDevices) WriteDisk(p []byte, off int64) error {
	_, err := l.disk.WriteAt(p, off)
	return err
}
