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
