package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/witness"
)

// The control socket (--control PATH): a Unix socket, mode 0600, in a
// directory of mode 0700 if ftckpt makes it, where each connection
// carries one JSON request (a line) and gets one JSON Response (a line).
// ftckpt ctl is its client (Ask).

// ControlVersion is the control protocol's version; a request of another
// is refused.
const ControlVersion = 1

// Request is one control request.
type Request struct {
	// V is ControlVersion.
	V int `json:"v"`
	// Op is status, set, pause, resume, detach-backup or failover.
	Op string `json:"op"`
	// Name and Value are set's: "epoch" and a duration (10ms) or auto.
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

// Response answers a Request: Error, or what was done (Message) and the
// node's status after it.
type Response struct {
	V       int     `json:"v"`
	Error   string  `json:"error,omitempty"`
	Message string  `json:"message,omitempty"`
	Status  *Status `json:"status,omitempty"`
}

// ops is what a node exposes to its operators beyond its Parts: the
// fence, the operator's hold on the guest, the metrics and the control
// socket. Start makes it; the node's run fills in the fence and the hold.
type ops struct {
	mu    sync.Mutex     // protects fence and hold
	fence *witness.Fence // this node's, once opened
	// firstGen is the first generation the fence held (a primary's at
	// start; a backup's when it went live).
	firstGen uint64
	hold     holder // the guest's machine, once built
	// listening is where a backup accepts its primary, once it does.
	listening string

	// acting orders what changes the node (Do's requests but status, a
	// stop's handover): one at a time.
	acting sync.Mutex
	// live is set once a backup has gone live (actingRole).
	live atomic.Bool
	// stop ends the node's run with a cause (ErrHandedOver); handedOver
	// is set first. ending is closed once the run is ending.
	stop       context.CancelCauseFunc
	ending     <-chan struct{}
	handedOver atomic.Bool
	metrics    *metrics // nil without --metrics
	progress   *progress
	stopHTTP   func()
	metricsLn  net.Listener
	controlLn  net.Listener
	served     sync.WaitGroup
}

// setFence records this node's fence, and the generation it won (0: none
// yet).
func (s *ops) setFence(f *witness.Fence, gen uint64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.fence, s.firstGen = f, gen
	s.mu.Unlock()
}

// wrapRunner puts a hold between the engine and r.
func (s *ops) wrapRunner(r machine.Runner) machine.Runner {
	if s == nil {
		return r
	}
	w, h := newHold(r)
	s.mu.Lock()
	s.hold = h
	s.mu.Unlock()
	return w
}

// wrapStepper puts a holdStepper between the replay engine and m.
func (s *ops) wrapStepper(m machine.Stepper) machine.Stepper {
	if s == nil {
		return m
	}
	h := newHoldStepper(m)
	s.mu.Lock()
	s.hold = h
	s.mu.Unlock()
	if _, ok := m.(replay.WindowAsker); ok {
		return holdStepperWindows{h}
	}
	return h
}

// wrapArbiter has the arbiter's round trips observed, with metrics on.
func (s *ops) wrapArbiter(a witness.Arbiter) witness.Arbiter {
	if s == nil || s.metrics == nil {
		return a
	}
	return timedArbiter{Arbiter: a, m: s.metrics}
}

// held returns the generation the fence holds (0: none or not valid), and
// the first one it held.
func (s *ops) held() (gen, first uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fence == nil {
		return 0, 0
	}
	g, state := s.fence.Held()
	if g == 0 || state == "revoked" {
		return 0, s.firstGen
	}
	if s.firstGen == 0 {
		s.firstGen = g
	}
	return g, s.firstGen
}

func (s *ops) theHold() holder {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hold
}

// partsChanged has what the node just built observed: its pauses by the
// metrics, its full syncs and pre-copies by the progress report.
// Precondition: the node's mu is held (Node.set).
func (s *ops) partsChanged(p *Parts) {
	if s.metrics != nil {
		s.metrics.partsChanged(p)
	}
	s.progress.follow(p)
}

// openOps starts the metrics server and the control socket o asks for,
// and the progress report on o.Status.
func (n *Node) openOps() error {
	o := &n.o
	s := n.ops
	s.progress = newProgress(o.Status)
	if ready := o.Ready; o.Role == RoleBackup {
		o.Ready = func(addr string) {
			s.mu.Lock()
			s.listening = addr
			s.mu.Unlock()
			if ready != nil {
				ready(addr)
			}
		}
	}
	if o.Metrics != "" {
		s.metrics = newMetrics(n)
		ln, err := net.Listen("tcp", o.Metrics)
		if err != nil {
			return fmt.Errorf("--metrics %s: %w", o.Metrics, err)
		}
		s.metricsLn = ln
		srv := serveMetrics(ln, s.metrics, o.log())
		s.stopHTTP = func() { srv.Close() }
	}
	if o.Control != "" {
		inDefault := filepath.Dir(o.Control) == ControlDir()
		if inDefault {
			FindControlSockets() // sweeps the sockets of nodes that died
		}
		ln, err := listenControl(o.Control)
		if err != nil && inDefault {
			// The default socket is a convenience: a directory where no
			// Unix socket can be bound (a 9p /tmp) does not stop the node.
			o.log().Warn("no control socket: ftckpt ctl cannot reach this node (give --control PATH)", "path", o.Control, "err", err)
			return nil
		}
		if err != nil {
			n.closeOps()
			return fmt.Errorf("--control %s: %w", o.Control, err)
		}
		s.controlLn = ln
		s.served.Add(1)
		go func() { defer s.served.Done(); n.serveControl(ln) }()
	}
	return nil
}

// closeOps stops the metrics server and the progress report, and removes
// the control socket.
func (n *Node) closeOps() {
	s := n.ops
	s.progress.stop()
	if s.stopHTTP != nil {
		s.stopHTTP()
	} else if s.metricsLn != nil {
		s.metricsLn.Close()
	}
	if s.controlLn != nil {
		s.controlLn.Close() // a Unix listener removes its socket file
	}
	s.served.Wait()
}

// MetricsAddr is where the node serves its metrics ("" without).
func (n *Node) MetricsAddr() string {
	if n.ops.metricsLn == nil {
		return ""
	}
	return n.ops.metricsLn.Addr().String()
}

// ControlDir is the directory of the nodes' default control sockets:
// $XDG_RUNTIME_DIR/ftckpt, or, without XDG_RUNTIME_DIR, ftckpt-UID in the
// temporary directory.
func ControlDir() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "ftckpt")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("ftckpt-%d", os.Getuid()))
}

// DefaultControlPath is where this process listens for ftckpt ctl in role
// unless told (--control): ROLE-PID.sock in ControlDir, so that the nodes
// of several pairs on one host never contend for a socket.
func DefaultControlPath(role Role) string {
	return filepath.Join(ControlDir(), fmt.Sprintf("%s-%d.sock", role, os.Getpid()))
}

// FindControlSockets returns the default control sockets in ControlDir
// that a node answers on, of the nodes started in one of roles (none: any
// role), by role in the order given, then by name. A socket no node
// answers on is left over from a node that died: it is removed.
func FindControlSockets(roles ...Role) []string {
	if len(roles) == 0 {
		roles = []Role{RolePrimary, RoleBackup, RoleAlone}
	}
	var paths []string
	for _, role := range roles {
		ps, _ := filepath.Glob(filepath.Join(ControlDir(), role.String()+"-*.sock"))
		paths = append(paths, ps...)
	}
	var live []string
	for _, p := range paths {
		c, err := net.DialTimeout("unix", p, time.Second)
		if err != nil {
			os.Remove(p)
			continue
		}
		c.Close()
		live = append(live, p)
	}
	return live
}

// FindControlSocket is the one default control socket of a node in role
// on this host, or an error naming them if there are several (then the
// caller must choose, --control).
func FindControlSocket(role Role) (string, error) {
	live := FindControlSockets(role)
	switch len(live) {
	case 0:
		return "", fmt.Errorf("no %s on this host answers on a control socket in %s (give --control PATH)", role, ControlDir())
	case 1:
		return live[0], nil
	}
	return "", fmt.Errorf("%d nodes started as %s on this host answer (%s): choose one with --control", len(live), role, strings.Join(live, ", "))
}

// listenControl listens on the Unix socket path, mode 0600, making its
// directory (0700) if missing. A socket file no one answers on is left
// over from a node that died: it is replaced. One that answers is in use.
func listenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, errors.New("another node is listening there")
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing a stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// maxRequest bounds a request line.
const maxRequest = 64 << 10

// serveControl answers requests on ln until it is closed, each connection
// on its own goroutine: a status is answered while a failover or a pause
// waits for the backup (Do runs one of those at a time).
func (n *Node) serveControl(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		n.ops.served.Add(1)
		go func() { defer n.ops.served.Done(); n.answer(c) }()
	}
}

// answer reads one request from c, carries it out and writes the response.
func (n *Node) answer(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	resp := Response{V: ControlVersion}
	line, err := bufio.NewReader(io.LimitReader(c, maxRequest)).ReadBytes('\n')
	var req Request
	if err == nil || errors.Is(err, io.EOF) && len(line) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(line)))
		dec.DisallowUnknownFields()
		err = dec.Decode(&req)
		if err != nil {
			err = fmt.Errorf("a request is one JSON object on a line, such as {\"v\":1,\"op\":\"status\"}: %w", err)
		}
	} else if err != nil {
		err = fmt.Errorf("reading the request: %w", err)
	}
	if err == nil {
		resp.Message, err = n.Do(req) // up to failoverWait (failover, pause, resume)
	}
	if err != nil {
		resp.Error = err.Error()
	} else {
		st := n.Status()
		resp.Status = &st
	}
	c.SetDeadline(time.Now().Add(10 * time.Second)) // from the answer on
	json.NewEncoder(c).Encode(resp)
}

// Do carries out an operator's request (the control socket's, or a
// test's) and says what it did. Safe to call from any goroutine: a status
// is answered at once, the other requests one at a time.
func (n *Node) Do(req Request) (string, error) {
	if req.V != ControlVersion {
		return "", fmt.Errorf("control protocol version %d: this node speaks version %d", req.V, ControlVersion)
	}
	if req.Op != "status" {
		n.ops.acting.Lock()
		defer n.ops.acting.Unlock()
	}
	switch req.Op {
	case "status":
		if req.Name != "" || req.Value != "" {
			return "", errors.New("status takes no arguments")
		}
		return "", nil
	case "set":
		return n.set1(req.Name, req.Value)
	case "pause", "resume":
		if req.Name != "" || req.Value != "" {
			return "", fmt.Errorf("%s takes no arguments", req.Op)
		}
		return n.pauseResume(req.Op == "pause")
	case "detach-backup":
		if req.Name != "" || req.Value != "" {
			return "", errors.New("detach-backup takes no arguments")
		}
		return n.detachBackup()
	case "failover":
		if req.Name != "" || req.Value != "" {
			return "", errors.New("failover takes no arguments")
		}
		return n.failover("ftckpt ctl failover")
	case "":
		return "", errors.New("no op: want status, set, pause, resume, detach-backup or failover")
	}
	return "", fmt.Errorf("op %q: want status, set, pause, resume, detach-backup or failover", req.Op)
}

// set1 sets a tunable: only "epoch" for now.
func (n *Node) set1(name, value string) (string, error) {
	if name != "epoch" {
		return "", fmt.Errorf("set %q: the only setting is epoch (set epoch 10ms, or set epoch auto)", name)
	}
	if n.o.Mode != ModeCheckpoint {
		return "", errors.New("set epoch: replay mode has no epochs")
	}
	p := n.Parts().CheckpointPrimary
	if p == nil {
		return "", errors.New("set epoch: this node is not a checkpoint primary: set it on the primary")
	}
	if value == "auto" {
		if err := p.SetEpoch(0, true); err != nil {
			return "", err
		}
		lo, hi := p.Bounds()
		return fmt.Sprintf("epoch auto (%v to %v) from the next epoch", lo, hi), nil
	}
	d, err := time.ParseDuration(value)
	if err != nil || d < 100*time.Microsecond || d > time.Minute {
		return "", fmt.Errorf("set epoch %q: want a duration from 100µs to 1m, such as 10ms, or auto", value)
	}
	if err := p.SetEpoch(d, false); err != nil {
		return "", err
	}
	return fmt.Sprintf("epoch %v from the next epoch", d), nil
}

// pauseResume holds or releases the guest, and answers once the backup
// has heard (or could not), so that a failover from then on keeps the
// guest as the operator left it.
func (n *Node) pauseResume(pause bool) (string, error) {
	op := map[bool]string{true: "pause", false: "resume"}[pause]
	if n.actingRole() == RoleBackup {
		return "", fmt.Errorf("%s: this node is a backup: its guest does not run", op)
	}
	h := n.ops.theHold()
	if h == nil {
		return "", fmt.Errorf("%s: %w", op, errNotRunning)
	}
	hears := n.backupHears()
	if !pause {
		if err := h.Release(); err != nil {
			return "", fmt.Errorf("resume: %w", err)
		}
		if hears == nil {
			return "guest running", nil
		}
		return "guest running; " + n.awaitBackup(hears, "runs it too", "keeps the guest paused"), nil
	}
	if err := h.Hold(); err != nil {
		return "", fmt.Errorf("pause: %w", err)
	}
	goesOn := "checkpoints go on"
	if n.o.Mode == ModeReplay {
		goesOn = "the log goes on"
	}
	return fmt.Sprintf("guest paused (%s; ftckpt ctl resume); %s", goesOn, n.awaitBackup(hears, "keeps it paused", "runs the guest")), nil
}

// backupHears returns, for a primary with a backup in sync, a test of
// whether that backup has heard of a hold or a release made after the
// call — it has acknowledged a checkpoint taken since (checkpoint mode:
// the checkpoint after the one being taken, which may have asked before)
// or the log entry that says so (replay mode) — and of whether it was
// lost meanwhile. Once it has heard, a failover keeps the guest as the
// operator left it. It returns nil for a node without such a backup.
func (n *Node) backupHears() func() (heard, lost bool) {
	parts := n.Parts()
	if p := parts.CheckpointPrimary; p != nil && p.Protected() {
		want := p.Position() + 1
		return func() (bool, bool) {
			_, acked, _, _, _ := p.Stats.Counters()
			return acked >= want, !p.Protected()
		}
	}
	if p := parts.ReplayPrimary; p != nil && p.Protected() {
		before := p.HoldLSN()
		return func() (bool, bool) {
			at := p.HoldLSN()
			return at > before && p.Stats.Acked.Load() >= at, !p.Protected()
		}
	}
	return nil
}

// awaitBackup waits up to failoverWait until hears (backupHears' test)
// says the backup has heard, or was lost, or the node is ending, and says
// how it went: what the backup does with the guest should it take over
// once it has heard (now), and before (then).
func (n *Node) awaitBackup(hears func() (heard, lost bool), now, then string) string {
	later := "one that syncs " + now + " should it take over"
	if hears == nil {
		return "no backup in sync now: " + later
	}
	deadline := time.Now().Add(failoverWait)
	for {
		heard, lost := hears()
		switch {
		case heard:
			return "the backup " + now + " should it take over"
		case lost:
			return "the backup was lost before it heard: " + later
		case time.Now().After(deadline):
			return fmt.Sprintf("the backup has not acknowledged it in %v: a failover before it does %s", failoverWait, then)
		}
		select {
		case <-n.ops.ending:
			return "this node stopped before the backup acknowledged it"
		case <-time.After(time.Millisecond):
		}
	}
}

// detachBackup lets the primary's backup go.
func (n *Node) detachBackup() (string, error) {
	if n.o.Mode == ModeReplay {
		p := n.Parts().ReplayPrimary
		if p == nil || n.actingRole() != RolePrimary {
			return "", errors.New("detach-backup: this node is not a primary")
		}
		ctx, cancel := context.WithTimeout(context.Background(), failoverWait)
		defer cancel()
		if err := p.Detach(ctx); err != nil {
			return "", fmt.Errorf("detach-backup: %w", err)
		}
		gen, _ := n.ops.held()
		return fmt.Sprintf("backup detached: this node holds generation %d and runs on alone", gen), nil
	}
	p := n.Parts().CheckpointPrimary
	if p == nil || n.actingRole() != RolePrimary {
		return "", errors.New("detach-backup: this node is not a checkpoint primary")
	}
	if err := p.Detach(); err != nil {
		return "", fmt.Errorf("detach-backup: %w", err)
	}
	return "detaching the backup: the primary takes the next generation and runs on alone", nil
}

// actingRole is the role the node plays now: a backup that went live (its
// guest restored and started, or held) is a primary; one that has won the
// witness's generation and is on its way is still a backup.
func (n *Node) actingRole() Role {
	if n.o.Role == RoleBackup && n.ops.live.Load() {
		if g, _ := n.ops.held(); g > 0 {
			return RolePrimary
		}
	}
	return n.o.Role
}

// Duration is a time.Duration that reads and writes as "25ms" in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

func (d Duration) String() string { return time.Duration(d).String() }

// Status is a node's state for its operator (ftckpt ctl status): plain
// data, JSON on the control socket.
type Status struct {
	Mode    string `json:"mode"`
	Role    string `json:"role"` // now: a backup gone live is a primary
	Started string `json:"started_as"`
	Machine string `json:"machine"`
	Guest   string `json:"guest"`
	// Peer is the backup's address (a primary's), or where a backup
	// listens for (or joins) its primary; none for a backup gone live.
	Peer string `json:"peer,omitempty"`
	// InSync: the backup holds a committed copy of the guest (on a
	// primary: and it has not lost its backup).
	InSync bool `json:"in_sync"`
	// Generation is the generation this node holds at the witness (0:
	// none), Failovers the times it went live from backup, BackupsLost the
	// times it went on alone without its backup.
	Generation  uint64 `json:"generation"`
	Failovers   uint64 `json:"failovers"`
	BackupsLost uint64 `json:"backups_lost"`
	// Paused: the operator holds the guest (ctl pause); on a backup, the
	// state it holds says the primary's operator did, and it keeps the
	// guest paused should it take over.
	Paused bool `json:"paused"`
	// Epoch is a checkpoint primary's interval now; EpochAuto whether it
	// adapts.
	Epoch      Duration          `json:"epoch,omitempty"`
	EpochAuto  bool              `json:"epoch_auto,omitempty"`
	Checkpoint *CheckpointStatus `json:"checkpoint,omitempty"`
	Replay     *ReplayStatus     `json:"replay,omitempty"`
	Outputs    *OutputStatus     `json:"outputs,omitempty"`
}

// CheckpointStatus are checkpoint mode's figures: a primary's (the status
// line's, over the last 1024 epochs) or a backup's (Committed...).
type CheckpointStatus struct {
	Epochs      uint64   `json:"epochs,omitempty"`
	Acked       uint64   `json:"acked,omitempty"`
	Lag         uint64   `json:"lag_epochs,omitempty"`
	PauseP50    Duration `json:"pause_p50,omitempty"`
	PauseP99    Duration `json:"pause_p99,omitempty"`
	StopP50     Duration `json:"stop_p50,omitempty"`
	HarvestP50  Duration `json:"harvest_p50,omitempty"`
	CopyP50     Duration `json:"copy_p50,omitempty"`
	StateP50    Duration `json:"state_p50,omitempty"`
	ResumeP50   Duration `json:"resume_p50,omitempty"`
	DirtyP50    int      `json:"dirty_p50_pages,omitempty"`
	WireBytes   uint64   `json:"wire_bytes,omitempty"`
	PageBytes   uint64   `json:"page_bytes,omitempty"`
	Resyncs     uint64   `json:"resyncs,omitempty"`
	BackupState string   `json:"backup_state,omitempty"`
	Committed   uint64   `json:"committed_epoch,omitempty"`
	CommitGen   uint64   `json:"committed_generation,omitempty"`
}

// ReplayStatus are replay mode's figures (Stats).
type ReplayStatus struct {
	Entries     uint64 `json:"lsn,omitempty"`
	Acked       uint64 `json:"acked_lsn,omitempty"`
	Exits       uint64 `json:"exits,omitempty"`
	Landings    uint64 `json:"landings,omitempty"`
	LogBytes    uint64 `json:"log_bytes,omitempty"`
	Syncs       uint64 `json:"syncs,omitempty"`
	Resyncs     uint64 `json:"resyncs,omitempty"`
	Received    uint64 `json:"received_lsn,omitempty"`
	Replayed    uint64 `json:"replayed,omitempty"`
	Divergences uint64 `json:"divergences,omitempty"`
	Breakpoints uint64 `json:"breakpoint_visits,omitempty"`
	Applied     uint64 `json:"checkpoints_applied,omitempty"`
}

// OutputStatus is the output buffer's state.
type OutputStatus struct {
	Held      int      `json:"held"`
	HeldBytes int64    `json:"held_bytes"`
	Released  uint64   `json:"released"`
	DelayP50  Duration `json:"delay_p50"`
	DelayP99  Duration `json:"delay_p99"`
}

// Status is the node's state now. Safe to call from any goroutine.
func (n *Node) Status() Status {
	o := &n.o
	role := n.actingRole()
	st := Status{Mode: o.Mode.String(), Role: role.String(), Started: o.Role.String(),
		Machine: machineLabel(o.Machine), Guest: o.Guest, Peer: o.Peer}
	if role == RoleBackup {
		n.ops.mu.Lock()
		st.Peer = n.ops.listening
		n.ops.mu.Unlock()
		if o.Join != "" {
			st.Peer = o.Join
		}
	}
	gen, first := n.ops.held()
	st.Generation = gen
	if h := n.ops.theHold(); h != nil {
		st.Paused = h.Held()
	}
	if o.Role == RoleBackup && gen > 0 {
		st.Failovers = 1
	}
	if gen > first && first > 0 {
		st.BackupsLost = gen - first
	}
	parts := n.Parts()
	if out := parts.Outputs; out != nil {
		s := out.Stats()
		st.Outputs = &OutputStatus{Held: s.HeldOutputs, HeldBytes: s.HeldBytes, Released: s.Released,
			DelayP50: Duration(s.Delay.Quantile(0.5)), DelayP99: Duration(s.Delay.Quantile(0.99))}
	}
	if p := parts.CheckpointPrimary; p != nil {
		epochs, acked, shipped, raw, _ := p.Stats.Counters()
		now := time.Now()
		pauses := p.Stats.Pauses(time.Time{}, now.Add(time.Second))
		m := ckmode.PauseMedian(pauses)
		captured := p.Position() - 1
		c := &CheckpointStatus{Epochs: epochs, Acked: acked, Lag: captured - min(acked, captured),
			PauseP50: Duration(ckmode.PauseQuantile(pauses, 0.5)), PauseP99: Duration(ckmode.PauseQuantile(pauses, 0.99)),
			StopP50: Duration(m.Stop), HarvestP50: Duration(m.Harvest), CopyP50: Duration(m.Copy),
			StateP50: Duration(m.State), ResumeP50: Duration(m.Resume), DirtyP50: m.Dirty,
			WireBytes: shipped, PageBytes: raw, Resyncs: p.Stats.ResyncCount()}
		st.Checkpoint = c
		st.InSync = p.Protected()
		_, st.EpochAuto = p.Epoch()
		st.Epoch = Duration(p.CurrentEpoch())
	}
	if b := parts.CheckpointBackup; b != nil && parts.CheckpointPrimary == nil {
		s := b.Status()
		st.Checkpoint = &CheckpointStatus{BackupState: s.State.String(), Committed: s.Epoch, CommitGen: s.Generation}
		st.InSync = s.State == format.StateCommitted && gen == 0
		if role == RoleBackup {
			st.Paused = s.Held
		}
	}
	if p := parts.ReplayPrimary; p != nil {
		s := p.Stats
		st.Replay = &ReplayStatus{Entries: s.Entries.Load(), Acked: s.Acked.Load(), Exits: s.Exits.Load(),
			Landings: s.Landings.Load(), LogBytes: s.LogBytes.Load(), Syncs: s.Syncs.Load(), Resyncs: s.Resyncs.Load()}
		st.InSync = p.InSync()
		st.BackupsLost = s.BackupsLost.Load()
	} else if b := parts.ReplayBackup; b != nil {
		s := b.Stats
		st.Replay = &ReplayStatus{Received: s.Received.Load(), Replayed: s.Replayed.Load(), Divergences: s.Divergences.Load(),
			Breakpoints: s.BreakpointHits.Load(), Applied: s.Applied.Load()}
		st.InSync = s.Applied.Load() > 0 && gen == 0
		st.Paused = b.Held()
	}
	return st
}

// Text renders s for a person, a line per subject.
func (s Status) Text() string {
	var b strings.Builder
	line := func(k, f string, args ...any) { fmt.Fprintf(&b, "%-12s"+f+"\n", append([]any{k}, args...)...) }
	sync := "NOT in sync"
	if s.InSync {
		sync = "in sync"
	}
	if s.Role == "alone" {
		sync = "unprotected"
	}
	role := s.Role
	if s.Started != s.Role {
		role += " (started as " + s.Started + ")"
	}
	line("role", "%s, generation %d, %s", role, s.Generation, sync)
	line("mode", "%s on %s, guest %s", s.Mode, s.Machine, s.Guest)
	if s.Peer != "" {
		line("peer", "%s", s.Peer)
	}
	switch {
	case s.Paused && s.Role == "backup":
		line("guest", "PAUSED by the primary's operator: it stays paused should this node take over")
	case s.Paused:
		line("guest", "PAUSED by the operator (ftckpt ctl resume)")
	}
	if s.Failovers > 0 || s.BackupsLost > 0 {
		line("history", "%d failovers to this node, %d backups lost", s.Failovers, s.BackupsLost)
	}
	if s.Epoch > 0 {
		kind := "fixed"
		if s.EpochAuto {
			kind = "auto"
		}
		line("epoch", "%v (%s)", s.Epoch, kind)
	}
	if c := s.Checkpoint; c != nil {
		switch {
		case c.BackupState != "" && s.Role == "primary":
			line("live", "from epoch %d of generation %d", c.Committed, c.CommitGen)
		case c.BackupState != "":
			line("backup", "%s: generation %d epoch %d", c.BackupState, c.CommitGen, c.Committed)
		default:
			ratio := 0.0
			if c.WireBytes > 0 {
				ratio = float64(c.PageBytes) / float64(c.WireBytes)
			}
			line("checkpoints", "%d (acked %d, lag %d), %d full syncs asked", c.Epochs, c.Acked, c.Lag, c.Resyncs)
			line("pause", "p50 %v p99 %v (p50 stop %v harvest %v copy %v state %v resume %v), dirty p50 %d pages",
				c.PauseP50, c.PauseP99, c.StopP50, c.HarvestP50, c.CopyP50, c.StateP50, c.ResumeP50, c.DirtyP50)
			line("shipped", "%.1f MB on the wire for %.1f MB of pages (%.1fx)", float64(c.WireBytes)/1e6, float64(c.PageBytes)/1e6, ratio)
		}
	}
	if r := s.Replay; r != nil {
		if s.Started == "backup" && s.Role == "backup" {
			line("replay", "lsn received %d, replayed %d, breakpoint visits %d, divergences %d, checkpoints applied %d",
				r.Received, r.Replayed, r.Breakpoints, r.Divergences, r.Applied)
		} else {
			line("log", "lsn %d (acked %d), exits %d, landings %d, %.1f KB shipped, full syncs %d (asked %d)",
				r.Entries, r.Acked, r.Exits, r.Landings, float64(r.LogBytes)/1e3, r.Syncs, r.Resyncs)
		}
	}
	if o := s.Outputs; o != nil {
		line("outputs", "held %d (%d bytes), released %d, delay p50 %v p99 %v", o.Held, o.HeldBytes, o.Released, o.DelayP50, o.DelayP99)
	}
	return b.String()
}

// Ask sends req to the control socket at path and returns the node's
// response; an error is the node's refusal or a failure to ask.
func Ask(ctx context.Context, path string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err // the path once, not twice
		}
		return Response{}, fmt.Errorf("no node answers at %s: %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	req.V = ControlVersion
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("asking %s: %w", path, err)
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(c, 1<<20)).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("reading the answer of %s: %w", path, err)
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// ErrHandedOver is how a primary node ends that handed its guest over to
// its backup (ftckpt ctl failover, or a checkpoint primary asked to stop:
// see Start).
var ErrHandedOver = errors.New("handed over to the backup")

// failoverWait bounds how long a planned failover waits for the backup to
// acknowledge the final checkpoint.
const failoverWait = 10 * time.Second

// failover hands a checkpoint primary's guest over to its backup, losing
// no output: the guest is held paused (handOver); the next checkpoint, of
// that final state, is acknowledged and every output released; then the
// engine stops without contesting the witness (as a stopping primary
// does), the backup finds the link closed, wins the next generation and
// goes live from that state (paused if the operator paused it), and this
// node ends with ErrHandedOver (and, given Rejoin, Run goes on as the new
// primary's backup). If the backup does not acknowledge within
// failoverWait or is lost, the guest runs on here (and stopAsked stops
// it). why says who asked, for the log (a replay primary's is ftckpt ctl
// failover: its stop hands over by itself).
func (n *Node) failover(why string) (string, error) {
	if n.o.Mode == ModeReplay {
		return n.replayFailover()
	}
	parts := n.Parts()
	p := parts.CheckpointPrimary
	switch {
	case n.actingRole() != RolePrimary:
		return "", errors.New("failover: this node is not a primary: ask the primary")
	case p == nil:
		return "", errors.New("failover: this node runs alone: it has no backup to hand over to")
	}
	if !n.Status().InSync {
		return "", errors.New("failover: the backup is not in sync: it has no state to take over")
	}
	h, _ := n.ops.theHold().(*hold) // checkpoint mode's
	if h == nil {
		return "", fmt.Errorf("failover: %w", errNotRunning)
	}
	if err := h.handOver(); err != nil {
		return "", fmt.Errorf("failover: pausing the guest: %w", err)
	}
	// From here the guest changes nothing: the checkpoint of epoch
	// Position() (or the one being taken) holds its final state, and says
	// whether the operator holds the guest (which the backup then keeps).
	final := p.Position()
	deadline := time.Now().Add(failoverWait)
	for {
		_, acked, _, _, _ := p.Stats.Counters()
		out := parts.Outputs.Stats()
		if acked >= final && out.HeldOutputs == 0 && out.Waiting == 0 {
			break
		}
		lost := !p.Protected()
		if time.Now().After(deadline) || out.Failed != nil || lost {
			h.endHandover()
			if lost {
				return "", fmt.Errorf("failover: the backup was lost before it acknowledged the final checkpoint (epoch %d): the guest was not handed over", final)
			}
			return "", fmt.Errorf("failover: the backup did not acknowledge the final checkpoint (epoch %d, acked %d, %d outputs held) in %v: the guest was not handed over",
				final, acked, out.HeldOutputs, failoverWait)
		}
		time.Sleep(time.Millisecond)
	}
	n.o.log().Warn("handing over to the backup ("+why+"): every output released; stopping", "epoch", final)
	n.ops.handedOver.Store(true)
	n.ops.stop(ErrHandedOver)
	return fmt.Sprintf("handing over: the backup takes over from epoch %d with every output released; this node %s", final, n.afterHandover()), nil
}

// replayFailover hands a replay primary's guest over to its backup: the
// primary stops as it does when asked to (SIGTERM): it logs where the
// guest stopped, ships the whole log and waits for the backup, which
// replays it to the end and goes live there. A backup still getting its
// full checkpoint by pre-copy gets the rest of it in the last stop and
// goes live there. As at any replay failover, the backup may repeat the
// last outputs; none is lost.
func (n *Node) replayFailover() (string, error) {
	p := n.Parts().ReplayPrimary
	switch {
	case n.actingRole() != RolePrimary:
		return "", errors.New("failover: this node is not a primary: ask the primary")
	case p == nil:
		return "", fmt.Errorf("failover: %w", errNotRunning)
	case !p.Protected():
		return "", errors.New("failover: this node runs alone: it has no backup to hand over to")
	case !p.InSync() && !p.Precopying():
		// It asked for a full checkpoint after losing part of the log:
		// the next boundary answers with a stop-and-copy.
		return "", errors.New("failover: the backup is waiting for a full checkpoint: ask again once ftckpt ctl status says in sync")
	}
	lsn := p.Stats.Entries.Load()
	how := "ships the rest of its log (lsn %d and on); the backup replays it and goes live where it stopped"
	if p.Precopying() {
		how = "sends the rest of the backup's full checkpoint, still being pre-copied, in its last stop (lsn %d); the backup goes live there"
	}
	n.o.log().Warn("handing over to the backup (ftckpt ctl failover): stopping", "lsn", lsn, "pre-copying", p.Precopying())
	n.ops.handedOver.Store(true)
	n.ops.stop(ErrHandedOver)
	return fmt.Sprintf("handing over: this node "+how+"; this node %s", lsn, n.afterHandover()), nil
}

// stopAsked ends the node's run because its caller asked (Start's ctx
// ended: SIGTERM, SIGINT) with cause. A checkpoint primary given
// HandOverOnStop first hands its guest over to a backup in sync, as ftckpt
// ctl failover does, so that the outputs it holds are released, not
// dropped: the backup would go live anyway, from the last acknowledged
// epoch, and the guest's clients would have to resend. If the handover
// cannot be made, the node just stops. A replay primary's stop hands over
// by itself (it ships the whole log).
func (n *Node) stopAsked(cause error) {
	n.ops.acting.Lock() // after an operator's request under way
	defer n.ops.acting.Unlock()
	// Only a checkpoint primary, or a live backup, has a CheckpointPrimary.
	p := n.Parts().CheckpointPrimary
	if n.o.HandOverOnStop && p != nil && p.Protected() && !n.ops.handedOver.Load() {
		_, err := n.failover("asked to stop")
		if err == nil {
			return
		}
		n.o.log().Warn("asked to stop: stopping the guest here; the backup, if it can, goes live from the last acknowledged epoch", "err", err)
	}
	n.ops.stop(cause)
}

// afterHandover says what this node does once it has handed its guest over.
func (n *Node) afterHandover() string {
	if n.o.Rejoin != "" {
		return "then joins it as its backup (--rejoin " + n.o.Rejoin + ")"
	}
	return "stops"
}
