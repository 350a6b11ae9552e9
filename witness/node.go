package witness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Peer is one member of a raft witness cluster.
type Peer struct {
	ID     string // raft server ID, unique in the cluster
	Client string // host:port of the client protocol (what raft:// specs list)
	Raft   string // raft transport address
}

// NodeConfig is everything a witness node is built from. Host resources
// (transport, stores) come in ready-made; the node owns them afterwards and
// closes those that are io.Closers in Shutdown.
type NodeConfig struct {
	ID    string // this node's ID; must be one of Peers
	Peers []Peer // the whole cluster, this node included, same on every node

	Transport raft.Transport
	Logs      raft.LogStore
	Stable    raft.StableStore
	Snapshots raft.SnapshotStore

	// Raft tunes raft (timeouts, snapshot thresholds). nil means
	// raft.DefaultConfig(). LocalID and Logger are set by the node.
	Raft *raft.Config
	// ApplyTimeout bounds how long a leader waits to enqueue a request in
	// its log. Zero means 5 s.
	ApplyTimeout time.Duration
	// Logger receives leader changes and raft's own messages. nil discards.
	Logger *slog.Logger
}

// Node is one running member of a raft witness cluster: a raft server
// whose FSM does the compare-and-set on (generation, owner), and an
// http.Handler serving the client protocol (protocol.go).
//
// Bootstrap: every node is started with the same Peers. A node with no raft
// state yet bootstraps that configuration; identical bootstraps on every
// node are safe, and a node that already has state ignores Peers' changes
// (membership is fixed at bootstrap).
type Node struct {
	cfg    NodeConfig
	raft   *raft.Raft
	fsm    *fsm
	log    *slog.Logger
	client map[raft.ServerID]string // peer ID → client address; read-only

	obsCh    chan raft.Observation
	obs      *raft.Observer
	stopObs  chan struct{}
	obsDone  chan struct{}
	mu       sync.Mutex // protects servers and stopped
	servers  []*http.Server
	stopped  bool // Shutdown has begun: Serve refuses
	shutdown sync.Once
	shutErr  error
}

// StartNode validates cfg, bootstraps the cluster if this node has no state
// yet, and starts raft. Serve the client protocol with Serve or by mounting
// the node as an http.Handler.
func StartNode(cfg NodeConfig) (*Node, error) {
	if err := validateNodeConfig(cfg); err != nil {
		return nil, err
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 5 * time.Second
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("witness", cfg.ID)
	rc := raft.DefaultConfig()
	if cfg.Raft != nil {
		c := *cfg.Raft
		rc = &c
	}
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = raftLogger(logger, "raft")
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("witness node %s: raft config: %w", cfg.ID, err)
	}

	n := &Node{
		cfg:     cfg,
		fsm:     &fsm{},
		log:     logger,
		client:  make(map[raft.ServerID]string, len(cfg.Peers)),
		obsCh:   make(chan raft.Observation, 16),
		stopObs: make(chan struct{}),
		obsDone: make(chan struct{}),
	}
	servers := make([]raft.Server, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		n.client[raft.ServerID(p.ID)] = p.Client
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.Raft)})
	}

	existing, err := raft.HasExistingState(cfg.Logs, cfg.Stable, cfg.Snapshots)
	if err != nil {
		return nil, fmt.Errorf("witness node %s: reading raft state: %w", cfg.ID, err)
	}
	if !existing {
		if err := raft.BootstrapCluster(rc, cfg.Logs, cfg.Stable, cfg.Snapshots, cfg.Transport,
			raft.Configuration{Servers: servers}); err != nil {
			return nil, fmt.Errorf("witness node %s: bootstrapping %d peers: %w", cfg.ID, len(servers), err)
		}
		logger.Info("bootstrapped witness cluster", "peers", len(servers))
	}
	r, err := raft.NewRaft(rc, n.fsm, cfg.Logs, cfg.Stable, cfg.Snapshots, cfg.Transport)
	if err != nil {
		return nil, fmt.Errorf("witness node %s: starting raft: %w", cfg.ID, err)
	}
	n.raft = r
	n.obs = raft.NewObserver(n.obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(n.obs)
	go n.logLeaders()
	return n, nil
}

func validateNodeConfig(cfg NodeConfig) error {
	if cfg.ID == "" {
		return errors.New("witness node: empty ID")
	}
	if cfg.Transport == nil || cfg.Logs == nil || cfg.Stable == nil || cfg.Snapshots == nil {
		return fmt.Errorf("witness node %s: transport, log store, stable store and snapshot store are all required", cfg.ID)
	}
	ids, addrs := map[string]bool{}, map[string]bool{}
	self := false
	for _, p := range cfg.Peers {
		if p.ID == "" || p.Client == "" || p.Raft == "" {
			return fmt.Errorf("witness node %s: peer %+v: ID, client and raft addresses are all required", cfg.ID, p)
		}
		if ids[p.ID] || addrs[p.Client] || addrs[p.Raft] {
			return fmt.Errorf("witness node %s: peer %s: ID or address listed twice", cfg.ID, p.ID)
		}
		ids[p.ID], addrs[p.Client], addrs[p.Raft] = true, true, true
		self = self || p.ID == cfg.ID
	}
	if !self {
		return fmt.Errorf("witness node %s: not among its peers %v", cfg.ID, cfg.Peers)
	}
	return nil
}

// logLeaders logs every leader change raft observes until Shutdown.
func (n *Node) logLeaders() {
	defer close(n.obsDone)
	for {
		select {
		case o := <-n.obsCh:
			lo := o.Data.(raft.LeaderObservation)
			if lo.LeaderID == "" {
				n.log.Warn("witness has no leader")
				continue
			}
			n.log.Info("witness leader changed", "leader", string(lo.LeaderID),
				"client", n.client[lo.LeaderID], "holder", n.fsm.current().String())
		case <-n.stopObs:
			return
		}
	}
}

// Serve answers the client protocol on l until Shutdown. After Shutdown it
// closes l and returns at once.
func (n *Node) Serve(l net.Listener) error {
	srv := &http.Server{Handler: n, ReadHeaderTimeout: 5 * time.Second}
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		l.Close()
		return nil
	}
	n.servers = append(n.servers, srv)
	n.mu.Unlock()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("witness node %s: serving %s: %w", n.cfg.ID, l.Addr(), err)
	}
	return nil
}

// Shutdown stops serving, shuts raft down and closes the transport and
// stores. It is idempotent.
func (n *Node) Shutdown() error {
	n.shutdown.Do(func() {
		n.mu.Lock()
		n.stopped = true
		for _, s := range n.servers {
			_ = s.Close()
		}
		n.mu.Unlock()
		var errs []error
		closed := map[io.Closer]bool{} // one store may be both Logs and Stable
		// Close the transport before waiting for raft's goroutines: one
		// blocked in an RPC to a dead peer then fails at once instead of
		// holding Shutdown up until its network timeout.
		fut := n.raft.Shutdown()
		if c, ok := n.cfg.Transport.(io.Closer); ok {
			closed[c] = true
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := fut.Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		n.raft.DeregisterObserver(n.obs)
		close(n.stopObs)
		<-n.obsDone
		for _, r := range []any{n.cfg.Logs, n.cfg.Stable, n.cfg.Snapshots} {
			if c, ok := r.(io.Closer); ok && !closed[c] {
				closed[c] = true
				if err := c.Close(); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if err := errors.Join(errs...); err != nil {
			n.shutErr = fmt.Errorf("witness node %s: shutting down: %w", n.cfg.ID, err)
		}
		n.log.Info("witness node stopped")
	})
	return n.shutErr
}

// ServeHTTP implements http.Handler: the client protocol.
func (n *Node) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var cmd command
	switch r.URL.Path {
	case pathAcquire:
		cmd.Op = opAcquire
	case pathCurrent:
		cmd.Op = opRead
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		writeResponse(w, http.StatusMethodNotAllowed, response{Status: statusError, Error: "use POST"})
		return
	}
	var req request
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		writeResponse(w, http.StatusBadRequest, response{Status: statusError, Error: "decoding request: " + err.Error()})
		return
	}
	if req.Version != ProtocolVersion {
		writeResponse(w, http.StatusBadRequest, response{Status: statusError,
			Error: fmt.Sprintf("protocol version %d, this node speaks %d", req.Version, ProtocolVersion)})
		return
	}
	if cmd.Op == opAcquire {
		if err := validateRequest(req.Generation, req.Owner); err != nil {
			writeResponse(w, http.StatusBadRequest, response{Status: statusError, Error: err.Error()})
			return
		}
		cmd.Generation, cmd.Owner = req.Generation, req.Owner
	}
	writeResponse(w, http.StatusOK, n.apply(r.Context(), cmd))
}

// apply puts cmd through the raft log and describes the outcome.
func (n *Node) apply(ctx context.Context, cmd command) response {
	if n.raft.State() != raft.Leader {
		return n.notLeader()
	}
	data, err := json.Marshal(cmd)
	if err != nil {
		return response{Status: statusError, Error: err.Error()}
	}
	f := n.raft.Apply(data, n.cfg.ApplyTimeout)
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		return response{Status: statusUnknown, Error: "client gave up before commit: " + ctx.Err().Error()}
	}
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return n.notLeader()
	case err != nil:
		return response{Status: statusUnknown, Error: fmt.Sprintf("node %s could not commit: %v", n.cfg.ID, err)}
	}
	res, ok := f.Response().(fsmResult)
	switch {
	case !ok:
		return response{Status: statusError, Error: fmt.Sprintf("node %s: FSM answered %T", n.cfg.ID, f.Response())}
	case res.Err != nil:
		return response{Status: statusError, Error: res.Err.Error()}
	case cmd.Op == opRead:
		return response{Status: statusHolder, Claim: res.Holder}
	case res.Won:
		return response{Status: statusWon, Claim: res.Holder}
	}
	return response{Status: statusLost, Claim: res.Holder}
}

// notLeader points the client at the leader, if one is known.
func (n *Node) notLeader() response {
	_, id := n.raft.LeaderWithID()
	if addr, ok := n.client[id]; ok && id != raft.ServerID(n.cfg.ID) {
		return response{Status: statusRedirect, Leader: addr}
	}
	return response{Status: statusNoLeader, Error: fmt.Sprintf("node %s knows no leader (can it reach a quorum?)", n.cfg.ID)}
}

func writeResponse(w http.ResponseWriter, code int, resp response) {
	resp.Version = ProtocolVersion
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(resp)
}

// raftLogger returns an hclog logger for raft's components that passes
// warnings and errors to log (raft is chatty at Info).
func raftLogger(log *slog.Logger, name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Warn, Output: slogWriter{log}})
}

// slogWriter sends raft's hclog lines to slog at Warn (hclog filters first).
type slogWriter struct{ log *slog.Logger }

func (s slogWriter) Write(p []byte) (int, error) {
	s.log.Warn(string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
