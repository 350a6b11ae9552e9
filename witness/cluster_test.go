package witness

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// testRaftConfig has short timeouts so elections take tens of milliseconds.
func testRaftConfig() *raft.Config {
	c := raft.DefaultConfig()
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	return c
}

// testCluster is a raft witness cluster inside the test process: real nodes
// with HTTP client listeners on loopback, and either the TCP raft transport
// with raft-boltdb stores or raft's in-memory transport (for exact
// partitions).
type testCluster struct {
	t     testing.TB
	peers []Peer
	nodes []*Node
	inmem []*raft.InmemTransport // nil for TCP clusters
}

func startTCPCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	trans := make([]raft.Transport, n)
	lns := make([]net.Listener, n)
	for i := range n {
		tr, err := raft.NewTCPTransportWithConfig("127.0.0.1:0", nil, raftTransportConfig(hclog.NewNullLogger(), time.Second))
		if err != nil {
			t.Fatal(err)
		}
		trans[i] = tr
		lns[i] = listenLoopback(t)
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("w%d", i), Client: lns[i].Addr().String(), Raft: string(tr.LocalAddr())})
	}
	for i := range n {
		dir := t.TempDir()
		store, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
		if err != nil {
			t.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		c.start(i, trans[i], store, store, snaps, lns[i])
	}
	return c
}

func startInmemCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	lns := make([]net.Listener, n)
	for i := range n {
		addr, tr := raft.NewInmemTransport("")
		c.inmem = append(c.inmem, tr)
		lns[i] = listenLoopback(t)
		c.peers = append(c.peers, Peer{ID: fmt.Sprintf("w%d", i), Client: lns[i].Addr().String(), Raft: string(addr)})
	}
	for i := range n {
		for j := range n {
			if i != j {
				c.inmem[i].Connect(c.inmem[j].LocalAddr(), c.inmem[j])
			}
		}
	}
	for i := range n {
		store := raft.NewInmemStore()
		c.start(i, c.inmem[i], store, store, raft.NewInmemSnapshotStore(), lns[i])
	}
	return c
}

func listenLoopback(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func (c *testCluster) start(i int, tr raft.Transport, logs raft.LogStore, stable raft.StableStore, snaps raft.SnapshotStore, ln net.Listener) {
	c.t.Helper()
	node, err := StartNode(NodeConfig{
		ID: c.peers[i].ID, Peers: c.peers,
		Transport: tr, Logs: logs, Stable: stable, Snapshots: snaps,
		Raft: testRaftConfig(), ApplyTimeout: time.Second,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.nodes = append(c.nodes, node)
	go func() {
		if err := node.Serve(ln); err != nil {
			c.t.Errorf("node %d: %v", i, err)
		}
	}()
	c.t.Cleanup(func() {
		if err := node.Shutdown(); err != nil {
			c.t.Errorf("node %d: %v", i, err)
		}
	})
}

// client returns a client of the given nodes (all when none are named).
func (c *testCluster) client(nodes ...int) *RaftClient {
	c.t.Helper()
	if len(nodes) == 0 {
		for i := range c.nodes {
			nodes = append(nodes, i)
		}
	}
	var addrs []string
	for _, i := range nodes {
		addrs = append(addrs, c.peers[i].Client)
	}
	cl, err := NewRaftClient(addrs, ClientOptions{RequestTimeout: time.Second, Backoff: Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// leader waits for a leader among the nodes not excluded and returns its
// index.
func (c *testCluster) leader(exclude ...int) int {
	c.t.Helper()
	l := -1
	vmmtest.WaitUntil(c.t, "a leader elected", func() bool {
		for i, n := range c.nodes {
			if !contains(exclude, i) && n.raft.State() == raft.Leader {
				l = i
				return true
			}
		}
		return false
	})
	return l
}

// isolate cuts node i off from every other node, both directions.
func (c *testCluster) isolate(i int) {
	for j := range c.inmem {
		if j != i {
			c.inmem[i].Disconnect(c.inmem[j].LocalAddr())
			c.inmem[j].Disconnect(c.inmem[i].LocalAddr())
		}
	}
}

// heal reconnects node i to every other node.
func (c *testCluster) heal(i int) {
	for j := range c.inmem {
		if j != i {
			c.inmem[i].Connect(c.inmem[j].LocalAddr(), c.inmem[j])
			c.inmem[j].Connect(c.inmem[i].LocalAddr(), c.inmem[i])
		}
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
