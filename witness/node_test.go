package witness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

func TestNodeProtocolErrors(t *testing.T) {
	c := startInmemCluster(t, 1)
	c.leader()
	url := "http://" + c.peers[0].Client
	cases := []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", pathAcquire, `{"version":2,"generation":1,"owner":"a"}`, 400, "protocol version 2"},
		{"POST", pathAcquire, `{"generation":1,"owner":"a"}`, 400, "protocol version 0"},
		{"POST", pathAcquire, `{"version":1,"generation":0,"owner":"a"}`, 400, "generation 0"},
		{"POST", pathAcquire, `{"version":1,"generation":1}`, 400, "empty owner"},
		{"POST", pathAcquire, `not json`, 400, "decoding request"},
		{"GET", pathCurrent, ``, 405, "use POST"},
		{"POST", "/v1/release", `{"version":1}`, 404, "not found"},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(b.String(), tc.want) {
			t.Errorf("%s %s %s: HTTP %d %s; want %d containing %q", tc.method, tc.path, tc.body, resp.StatusCode, b.String(), tc.code, tc.want)
		}
	}
	// A client refuses an answer in another protocol version.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(response{Version: 9, Status: statusWon})
	})}
	ln := listenLoopback(t)
	go srv.Serve(ln)
	defer srv.Close()
	cl, _ := NewRaftClient([]string{ln.Addr().String()}, ClientOptions{Backoff: fastBackoff})
	if _, err := cl.Acquire(ctxTimeout(t, 10*time.Second), 1, "a"); !errors.Is(err, errProtocol) || !strings.Contains(err.Error(), "protocol version 9") {
		t.Fatalf("answer in version 9: %v", err)
	}
}

func TestNodeConfigErrors(t *testing.T) {
	c := startInmemCluster(t, 1)
	base := c.nodes[0].cfg
	for name, mod := range map[string]func(*NodeConfig){
		"no id":       func(n *NodeConfig) { n.ID = "" },
		"not a peer":  func(n *NodeConfig) { n.ID = "zz" },
		"no stores":   func(n *NodeConfig) { n.Logs = nil },
		"dup peer":    func(n *NodeConfig) { n.Peers = append(n.Peers, n.Peers[0]) },
		"empty field": func(n *NodeConfig) { n.Peers = []Peer{{ID: n.ID}} },
	} {
		cfg := base
		cfg.Peers = append([]Peer(nil), base.Peers...)
		mod(&cfg)
		if _, err := StartNode(cfg); err == nil {
			t.Errorf("%s: StartNode accepted %+v", name, cfg)
		}
	}
}

// handedOut holds the ports freeClientPort has returned.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freeClientPort returns a loopback port p with p+1 free too (the raft
// port), both below the ephemeral range, where the outgoing connections of
// tests running beside this one cannot land. Another process may still take
// them before RunNode does; then RunNode's error says so. p is even and
// never handed out twice in this process, so no two nodes' pairs overlap
// (one cluster once got w0's raft port as w1's client port: "ID or address
// listed twice").
func freeClientPort(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 1000 {
		p := 20000 + 2*rand.IntN(6000)
		if handedOut.ports[p] {
			continue
		}
		free := true
		for _, port := range []int{p, p + 1} {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				free = false
				break
			}
			ln.Close()
		}
		if free {
			handedOut.ports[p] = true
			return fmt.Sprintf("127.0.0.1:%d", p)
		}
	}
	t.Fatal("no pair of free loopback ports")
	return ""
}

// TestRunNodeRestart runs the node `ftckpt witness` runs (TCP transport,
// raft-boltdb, file snapshots), with snapshots taken often, stops the whole
// cluster cleanly and starts it again from its data directories: the holder
// survives.
func TestRunNodeRestart(t *testing.T) {
	var list []string
	for i := range 3 {
		list = append(list, fmt.Sprintf("w%d=%s", i, freeClientPort(t)))
	}
	peers, err := ParsePeers(strings.Join(list, ","))
	if err != nil {
		t.Fatal(err)
	}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	run := func() (cancel func()) {
		ctx, cancelCtx := context.WithCancel(context.Background())
		errs := make(chan error, len(peers))
		for i, p := range peers {
			rc := testRaftConfig()
			rc.SnapshotThreshold, rc.SnapshotInterval, rc.TrailingLogs = 8, 20*time.Millisecond, 4
			go func() {
				errs <- RunNode(ctx, ServeConfig{ID: p.ID, Bind: p.Client, Peers: peers, DataDir: dirs[i], Raft: rc})
			}()
		}
		return func() {
			cancelCtx()
			for range peers {
				if err := <-errs; err != nil {
					t.Errorf("RunNode: %v", err)
				}
			}
		}
	}
	var addrs []string
	for _, p := range peers {
		addrs = append(addrs, p.Client)
	}
	client := func() *RaftClient {
		cl, err := NewRaftClient(addrs, ClientOptions{RequestTimeout: time.Second, Backoff: Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}

	stop := run()
	cl := client()
	ctx := ctxTimeout(t, 20*time.Second)
	for g := uint64(1); g <= 40; g++ {
		if _, err := cl.Acquire(ctx, g, fmt.Sprintf("p%d", g%3)); err != nil {
			t.Fatal(err)
		}
	}
	want, err := cl.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Raft takes its snapshots in the background.
	vmmtest.WaitUntil(t, "a snapshot on disk", func() bool { return hasSnapshot(dirs) })
	cl.Close()
	stop()

	stop = run()
	defer stop()
	cl = client()
	defer cl.Close()
	if got, err := cl.Current(ctx); err != nil || got != want {
		t.Fatalf("after restart Current = %v, %v; want %v", got, err, want)
	}
	if _, err := cl.Acquire(ctx, want.Generation, "intruder"); err == nil {
		t.Fatal("restarted cluster gave a held generation away")
	}
	if _, err := cl.Acquire(ctx, want.Generation+1, "next"); err != nil {
		t.Fatal(err)
	}
}

func hasSnapshot(dirs []string) bool {
	for _, d := range dirs {
		m, _ := filepath.Glob(filepath.Join(d, "snapshots", "*", "state.bin"))
		for _, f := range m {
			if st, err := os.Stat(f); err == nil && st.Size() > 0 {
				return true
			}
		}
	}
	return false
}
