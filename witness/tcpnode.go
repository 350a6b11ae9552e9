package witness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// ServeConfig is what `ftckpt witness` runs: one node of a raft witness
// cluster with durable stores under DataDir and the real TCP transport.
type ServeConfig struct {
	ID      string // this node's ID, one of Peers
	Bind    string // listen address of the client protocol; raft listens on its port + 1
	Peers   []Peer // from ParsePeers; the same list on every node
	DataDir string // raft.db (raft-boltdb log and stable store) and snapshots/
	Raft    *raft.Config
	Logger  *slog.Logger
	// TLS is this node's identity in its cluster: clients and the other
	// nodes are accepted, and the other nodes dialled, only with mutual
	// TLS 1.3 and certificates of the same CA (mtls). nil is plain TCP.
	TLS *mtls.Identity
}

// ParsePeers parses the --peers list "ID=HOST:PORT,ID=HOST:PORT,...". Each
// HOST:PORT is the node's client address; its raft transport is at
// HOST:PORT+1.
func ParsePeers(s string) ([]Peer, error) {
	if s == "" {
		return nil, errors.New("peers: empty list; want ID=HOST:PORT, comma-separated")
	}
	var peers []Peer
	for _, item := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(item, "=")
		if !ok || id == "" {
			return nil, fmt.Errorf("peer %q: want ID=HOST:PORT", item)
		}
		if err := checkHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %s: %w", id, err)
		}
		raftAddr, err := raftAddrOf(addr)
		if err != nil {
			return nil, fmt.Errorf("peer %s: %w", id, err)
		}
		peers = append(peers, Peer{ID: id, Client: addr, Raft: raftAddr})
	}
	return peers, nil
}

// raftAddrOf returns HOST:PORT+1 for a client address HOST:PORT.
func raftAddrOf(client string) (string, error) {
	host, port, err := net.SplitHostPort(client)
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p >= 65535 {
		return "", fmt.Errorf("client port %q: want 1..65534 (raft uses the next port)", port)
	}
	return net.JoinHostPort(host, strconv.Itoa(p+1)), nil
}

// RunNode runs one witness node until ctx ends, then shuts it down cleanly.
// Bootstrap: start every node with the same Peers; each bootstraps that
// configuration once, on first start (see Node).
func RunNode(ctx context.Context, cfg ServeConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var self *Peer
	for i := range cfg.Peers {
		if cfg.Peers[i].ID == cfg.ID {
			self = &cfg.Peers[i]
		}
	}
	if self == nil {
		return fmt.Errorf("witness %q: not in --peers (IDs: %s)", cfg.ID, peerIDs(cfg.Peers))
	}
	if cfg.DataDir == "" {
		return fmt.Errorf("witness %s: no data directory", cfg.ID)
	}
	raftBind, err := raftAddrOf(cfg.Bind)
	if err != nil {
		return fmt.Errorf("witness %s: --bind %q: %w", cfg.ID, cfg.Bind, err)
	}
	advertise, err := net.ResolveTCPAddr("tcp", self.Raft)
	if err != nil {
		return fmt.Errorf("witness %s: resolving own raft address %s: %w", cfg.ID, self.Raft, err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("witness %s: data directory: %w", cfg.ID, err)
	}

	// Listen for clients first: a busy port is reported before raft starts.
	var ln net.Listener
	ln, err = net.Listen("tcp", cfg.Bind)
	if err != nil {
		return fmt.Errorf("witness %s: client listener: %w", cfg.ID, err)
	}
	if cfg.TLS != nil {
		ln = http1Listener{mtls.Listen(ln, mtls.ListenOptions{Identity: cfg.TLS, Proto: ClientALPN,
			What: "witness " + cfg.ID + " client port " + ln.Addr().String(), Log: cfg.Logger})}
	}
	defer ln.Close()
	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
	if err != nil {
		return fmt.Errorf("witness %s: opening raft.db: %w", cfg.ID, err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, raftLogger(cfg.Logger.With("witness", cfg.ID), "snapshots"))
	if err != nil {
		store.Close()
		return fmt.Errorf("witness %s: snapshot store: %w", cfg.ID, err)
	}
	trans, err := raftTransport(cfg, raftBind, advertise)
	if err != nil {
		store.Close()
		return fmt.Errorf("witness %s: raft transport on %s: %w", cfg.ID, raftBind, err)
	}
	node, err := StartNode(NodeConfig{
		ID: cfg.ID, Peers: cfg.Peers,
		Transport: trans, Logs: store, Stable: store, Snapshots: snaps,
		Raft: cfg.Raft, Logger: cfg.Logger,
	})
	if err != nil {
		trans.Close()
		store.Close()
		return err
	}
	cfg.Logger.Info("witness node serving", "id", cfg.ID, "client", ln.Addr().String(), "raft", raftBind, "data", cfg.DataDir, "tls", cfg.TLS != nil)
	served := make(chan error, 1)
	go func() { served <- node.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err = <-served:
	}
	if serr := node.Shutdown(); serr != nil {
		err = errors.Join(err, serr)
	}
	return err
}

// raftTransport is raft's TCP transport between the nodes, through mutual
// TLS with cfg.TLS (tlsStream), or plain.
func raftTransport(cfg ServeConfig, bind string, advertise net.Addr) (*raft.NetworkTransport, error) {
	tc := raftTransportConfig(raftLogger(cfg.Logger.With("witness", cfg.ID), "raft-net"), 5*time.Second)
	if cfg.TLS == nil {
		return raft.NewTCPTransportWithConfig(bind, advertise, tc)
	}
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	tc.Stream = &tlsStream{id: cfg.TLS, advertise: advertise, Listener: mtls.Listen(ln, mtls.ListenOptions{
		Identity: cfg.TLS, Proto: RaftALPN, Confirm: true,
		What: "witness " + cfg.ID + " raft port " + ln.Addr().String(), Log: cfg.Logger})}
	return raft.NewNetworkTransportWithConfig(tc), nil
}

// raftTransportConfig is the witness's raft transport settings: four
// pooled connections a peer, RPCs that time out after timeout, and no
// pipelining of AppendEntries (MaxRPCsInFlight 1: one request at a time,
// each with its timeout). raft 1.7's pipeline (its default, 2 in flight)
// can deadlock: when a follower answers an append with Success=false,
// the pipeline's decoder stops reading while the next append waits to be
// decoded, and nothing but the pipeline's own Close (which the stuck
// sender would call) frees them. The leader then never replicates to that
// follower again, and its Shutdown never returns (seen here: a node of
// TestRaftRace's cluster under load, stuck 10 minutes in
// netPipeline.AppendEntries). A witness appends a few claims a failover:
// pipelining gains it nothing.
func raftTransportConfig(logger hclog.Logger, timeout time.Duration) *raft.NetworkTransportConfig {
	return &raft.NetworkTransportConfig{MaxPool: 4, Timeout: timeout, Logger: logger, MaxRPCsInFlight: 1}
}

// http1Listener hands net/http the connections of an mtls.Listener, their
// handshake done, as plain ones: net/http closes a TLS connection whose
// ALPN protocol it does not know (ClientALPN), and has nothing left to do
// with TLS.
type http1Listener struct{ net.Listener }

func (l http1Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return struct{ net.Conn }{c}, nil
}

// tlsStream is raft's stream layer through mutual TLS: it accepts only
// nodes of the cluster (mtls.Listener) and dials them with this node's
// certificate, checking theirs.
type tlsStream struct {
	*mtls.Listener
	id        *mtls.Identity
	advertise net.Addr
}

// Addr is the address the other nodes know this one by.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial implements raft.StreamLayer.
func (s *tlsStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return mtls.Dial(ctx, string(addr), mtls.DialOptions{Identity: s.id, Proto: RaftALPN, Confirm: true, Timeout: timeout})
}

func peerIDs(peers []Peer) string {
	ids := make([]string, len(peers))
	for i, p := range peers {
		ids[i] = p.ID
	}
	return strings.Join(ids, ",")
}
