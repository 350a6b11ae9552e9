package node

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/witness"
)

// Backups that join a running guest, in checkpoint mode (replay mode's are
// in replay.go), and a node's re-protection: a primary, or a backup gone
// live, with AcceptBackups takes a backup whenever its guest runs
// unprotected, and with Respawn starts one itself.

// joinRetry is how long a joining backup waits before it dials again
// after a primary turned it away, was lost, or was not there.
const joinRetry = 500 * time.Millisecond

// joinDialer returns a backup's next connection to the primary at o.Join:
// it dials until a primary is there and passes the handshake, waiting
// joinRetry between attempts (the first call dials at once). A handshake
// refusal (mtls.IsRefusal: a certificate or name not accepted) ends it:
// trying again would be refused again.
func joinDialer(o *Options) func(ctx context.Context) (net.Conn, error) {
	first := true
	return func(ctx context.Context) (net.Conn, error) {
		for {
			if !first {
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(joinRetry):
				}
			}
			first = false
			conn, err := dialPeer(ctx, o, o.Join, 10*time.Second)
			if err == nil || ctx.Err() != nil || mtls.IsRefusal(err) {
				return conn, err
			}
			o.log().Info("no primary took this backup yet; trying again", "join", o.Join, "err", err)
		}
	}
}

// acceptListener listens for joining backups at o.AcceptBackups (nil if
// empty), through the handshake, until ctx ends.
func acceptListener(ctx context.Context, o *Options) (net.Listener, error) {
	if o.AcceptBackups == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", o.AcceptBackups)
	if err != nil {
		return nil, fmt.Errorf("--accept-backups: %w", err)
	}
	sln := secure(o, ln, "--accept-backups")
	context.AfterFunc(ctx, func() { sln.Close() })
	return sln, nil
}

// respawner starts a backup that joins this node (Options.Respawn) each
// time its guest runs unprotected, unless the last one it started still
// runs (it is then joining, or trying to). stop stops the last one.
type respawner struct {
	o    *Options
	addr string // where this node accepts backups

	mu      sync.Mutex // protects last and started
	last    *Backup
	started time.Time
}

// respawnEvery is the least time between two backups started: one that
// fails at once is not started again in a tight loop.
const respawnEvery = time.Second

// unprotected starts a backup unless the last one still runs or was
// started less than respawnEvery ago. It does not wait for it to join.
func (r *respawner) unprotected() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last != nil {
		select {
		case <-r.last.Exited:
		default:
			return // still running: joining, or trying again to
		}
	}
	if time.Since(r.started) < respawnEvery {
		return
	}
	r.started = time.Now()
	b, err := r.o.Respawn(r.addr)
	if err != nil {
		r.o.log().Error("could not start a backup; running unprotected", "err", err)
		r.last = nil
		return
	}
	r.last = &b // Respawn says so, with the process it started
}

// stop stops the last backup started, if it runs, unless the guest was
// handed over to it (ftckpt ctl failover): it is the primary now.
func (r *respawner) stop() {
	if r == nil || r.o.ops.handedOver.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last != nil {
		r.last.Stop(LocalStopGrace)
	}
}

// newRespawner is ln's respawner, nil without Options.Respawn or ln.
func newRespawner(o *Options, ln net.Listener) *respawner {
	if o.Respawn == nil || ln == nil {
		return nil
	}
	return &respawner{o: o, addr: ln.Addr().String()}
}

// protectionWatch is how often watchProtection looks whether the guest
// runs unprotected.
const protectionWatch = 100 * time.Millisecond

// watchProtection has rs start a backup whenever protected says the guest
// runs unprotected, looking every protectionWatch (a backup it started that
// died before it joined is replaced, not only at the next loss), until
// stop, which also stops the last backup started.
func watchProtection(rs *respawner, protected func() bool) (stop func()) {
	if rs == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(protectionWatch)
		defer t.Stop()
		for {
			if !protected() {
				rs.unprotected()
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); wg.Wait(); rs.stop() }
}

// checkpointOutputs is a checkpoint-mode primary's output buffer for
// generation gen, frames to netSink and, with h's disk, writes held by a
// HeldDisk at pos (nil without a disk), closed before that disk is.
func checkpointOutputs(gen uint64, fence *witness.Fence, netSink outbuf.NetSink, h *host, pos func() uint64) (*outbuf.Buffer, *ckmode.HeldDisk, error) {
	env := outbuf.Env{Generation: gen, Fence: fence, Net: netSink, Clock: outbuf.SystemClock{}}
	var held *ckmode.HeldDisk
	if h.disk != nil {
		held = ckmode.NewHeldDisk(h.disk, pos)
		h.stopBeforeDiskCloses(held.Close)
		env.Disk = held.Sink()
	}
	out, err := outbuf.New(outbuf.DefaultConfig(), env)
	if err != nil {
		return nil, nil, err
	}
	if held != nil {
		held.Attach(out)
	}
	return out, held, nil
}

// protectCheckpoint runs primary, its guest started, until the guest stops
// or ctx ends: replicating to conn's backup (nil: none), and to each
// backup that joins at o.AcceptBackups while the guest runs unprotected
// (ckmode.Primary.Protect), started there by o.Respawn if set.
func (n *Node) protectCheckpoint(ctx context.Context, primary *ckmode.Primary, r *runner, out *outbuf.Buffer, conn net.Conn) error {
	o := &n.o
	ln, err := acceptListener(ctx, o)
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return err
	}
	rs := newRespawner(o, ln)
	defer watchProtection(rs, primary.Protected)()
	stop := statusLines(o.Status, o.StatusEvery, func() string {
		st := out.Stats()
		return primary.Stats.Line(time.Now(), fmt.Sprintf("p50 %v p99 %v", st.Delay.Quantile(0.5), st.Delay.Quantile(0.99)))
	})
	defer stop()
	var listener net.Listener // a nil *mtls listener would not be a nil interface
	if ln != nil {
		listener = ln
	}
	err = primary.Protect(ctx, conn, listener, rs.unprotected)
	if err == nil {
		return r.wait()
	}
	return err
}

// liveDevices are the devices of a checkpoint backup that becomes a
// primary once live (Options.AcceptBackups): until then its network sends
// nowhere (the guest does not run) and its disk is the image; once it has
// won its generation, its outputs are held for the backups to come.
type liveDevices struct {
	net  lateSink
	disk lateDisk
}

// lateSink is a network device's sink, chosen later; nil sends nothing.
type lateSink struct{ to atomic.Pointer[vmm.FrameSink] }

// SendFrame implements vmm.FrameSink.
func (s *lateSink) SendFrame(f []byte) error {
	if t := s.to.Load(); t != nil {
		return (*t).SendFrame(f)
	}
	return nil
}

func (s *lateSink) set(to vmm.FrameSink) { s.to.Store(&to) }

// lateDisk is a disk device's disk, chosen later (set before the guest
// runs: no request is in flight when it changes).
type lateDisk struct{ to atomic.Pointer[vmm.Disk] }

func (d *lateDisk) set(to vmm.Disk) { d.to.Store(&to) }

// ReadAt implements vmm.Disk.
func (d *lateDisk) ReadAt(p []byte, off int64) (int, error) { return (*d.to.Load()).ReadAt(p, off) }

// WriteAt implements vmm.Disk.
func (d *lateDisk) WriteAt(p []byte, off int64) (int, error) { return (*d.to.Load()).WriteAt(p, off) }

// Flush implements vmm.Disk.
func (d *lateDisk) Flush() error { return (*d.to.Load()).Flush() }

// Size implements vmm.Disk.
func (d *lateDisk) Size() int64 { return (*d.to.Load()).Size() }

// becomePrimary turns a live backup's devices into a primary's for
// generation gen (won): outputs held in a new buffer whose frames go to
// netSink, the disk's writes held at the primary's epochs. It returns the
// primary and its buffer. Called by GoLive before the guest starts.
func (d *liveDevices) becomePrimary(o *Options, gen uint64, fence *witness.Fence, h *host, r *runner, netSink outbuf.NetSink) (*ckmode.Primary, *outbuf.Buffer, error) {
	var primary *ckmode.Primary
	pos := func() uint64 { return primary.Position() }
	out, held, err := checkpointOutputs(gen, fence, netSink, h, pos)
	if err != nil {
		return nil, nil, err
	}
	cfg := o.Checkpoint
	cfg.Machine = o.describe(h.diskSize())
	if primary, err = ckmode.NewPrimary(cfg, r.Runner, out, fence, gen, o.log()); err != nil {
		return nil, nil, err
	}
	if held != nil {
		held.SetPoll(r.pollDisk)
		o.setPrimaryDisk(primary, held)
		d.disk.set(held)
	}
	d.net.set(ckmode.HeldNet{Out: out, Pos: pos})
	return primary, out, nil
}

// pid is this process's, for the log lines that say which process is
// primary (a local run's processes share one terminal).
var pid = os.Getpid()
