package witness

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint/mtls"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/hashicorp/raft"
)

func TestRaftContract(t *testing.T) {
	c := startTCPCluster(t, 3)
	checkArbiterContract(t, c.client())
}

// TestRaftRace races 2, then 5 candidates, each with its own client of a
// real 3-node cluster on loopback TCP with raft-boltdb stores, 1,000 rounds
// each.
func TestRaftRace(t *testing.T) {
	c := startTCPCluster(t, 3)
	for _, n := range []int{2, 5} {
		t.Run(fmt.Sprintf("candidates=%d", n), func(t *testing.T) {
			arbs := make([]Arbiter, n)
			for i := range arbs {
				arbs[i] = c.client()
			}
			raceRounds(t, arbs, 1000)
		})
	}
	// Every node applied the same history.
	want := c.nodes[c.leader()].fsm.current()
	if err := c.nodes[c.leader()].raft.Barrier(time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		waitApplied(t, n, want)
	}
}

// waitApplied waits until n's FSM reaches want (followers apply after the
// leader).
func waitApplied(t *testing.T, n *Node, want Claim) {
	t.Helper()
	vmmtest.WaitUntil(t, fmt.Sprintf("a node to apply %v", want), func() bool { return n.fsm.current() == want })
}

// TestRaftOneOfThreeKilled kills the leader: the two survivors elect a new
// one and the next failover is still decided, through the client's retries.
func TestRaftOneOfThreeKilled(t *testing.T) {
	c := startTCPCluster(t, 3)
	ctx := ctxTimeout(t, 20*time.Second)
	a, b := c.client(), c.client()
	if _, err := a.Acquire(ctx, 1, "primary"); err != nil {
		t.Fatal(err)
	}
	dead := c.leader()
	if err := c.nodes[dead].Shutdown(); err != nil {
		t.Fatal(err)
	}
	arbs := []Arbiter{a, b}
	raceRounds(t, arbs, 20)
	if l := c.leader(dead); l == dead {
		t.Fatal("dead node still leader")
	}
	if cur, err := b.Current(ctx); err != nil || cur.Generation != 21 {
		t.Fatalf("Current after failover = %v, %v", cur, err)
	}
}

// TestRaftTwoOfThreeKilled: with one witness of three left there is no
// quorum, so no candidate wins and each says the quorum is unreachable.
func TestRaftTwoOfThreeKilled(t *testing.T) {
	c := startTCPCluster(t, 3)
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := c.client().Acquire(ctx, 1, "primary"); err != nil {
		t.Fatal(err)
	}
	l := c.leader()
	survivor := (l + 1) % 3
	waitApplied(t, c.nodes[survivor], Claim{1, "primary"})
	for i := range c.nodes {
		if i != survivor {
			if err := c.nodes[i].Shutdown(); err != nil {
				t.Fatal(err)
			}
		}
	}
	errs := make([]error, 2)
	done := make(chan int)
	for i := range errs {
		go func() {
			_, errs[i] = c.client().Acquire(ctxTimeout(t, 1500*time.Millisecond), 2, fmt.Sprintf("cand-%d", i))
			done <- i
		}()
	}
	<-done
	<-done
	for i, err := range errs {
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "quorum unreachable") {
			t.Fatalf("candidate %d: %v; want an unreachable-quorum error", i, err)
		}
		t.Logf("candidate %d: %v", i, err)
	}
	if _, err := c.client(survivor).Current(ctxTimeout(t, 500*time.Millisecond)); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Current without quorum = %v", err)
	}
	if h := c.nodes[survivor].fsm.current(); h != (Claim{1, "primary"}) {
		t.Fatalf("survivor applied %v without a quorum", h)
	}
}

// TestRaftPartition isolates the leader with raft's in-memory transport: a
// candidate that can reach only the isolated leader never wins, while one on
// the majority side does; after healing, the isolated side learns the winner.
func TestRaftPartition(t *testing.T) {
	c := startInmemCluster(t, 3)
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := c.client().Acquire(ctx, 1, "primary"); err != nil {
		t.Fatal(err)
	}
	old := c.leader()
	c.isolate(old)
	var majority []int
	for i := range c.nodes {
		if i != old {
			majority = append(majority, i)
		}
	}
	isolated, other := c.client(old), c.client(majority...)

	errIsolated := make(chan error, 1)
	go func() {
		_, err := isolated.Acquire(ctxTimeout(t, 1500*time.Millisecond), 2, "isolated")
		errIsolated <- err
	}()
	won, err := other.Acquire(ctx, 2, "majority")
	if err != nil {
		t.Fatalf("majority side: %v", err)
	}
	if won != (Claim{2, "majority"}) {
		t.Fatalf("majority side won %v", won)
	}
	if err := <-errIsolated; !errors.Is(err, ErrUnreachable) {
		t.Fatalf("isolated side: %v; want unreachable", err)
	}
	if h := c.nodes[old].fsm.current(); h != (Claim{1, "primary"}) {
		t.Fatalf("isolated node applied %v", h)
	}

	c.heal(old)
	var lost *LostError
	if _, err := isolated.Acquire(ctx, 2, "isolated"); !errors.As(err, &lost) || lost.Holder != won {
		t.Fatalf("isolated side after healing: %v; want a loss naming %v", err, won)
	}
	for _, n := range c.nodes {
		waitApplied(t, n, won)
	}
}

// TestRaftTransportSendsAppendsOneAtATime: the witness's raft transport,
// plain and with TLS, has no AppendEntries pipeline (raftTransportConfig:
// raft 1.7's can deadlock a leader's replication and its shutdown).
func TestRaftTransportSendsAppendsOneAtATime(t *testing.T) {
	ca, err := mtls.NewCA("witness test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.Identity("w0")
	if err != nil {
		t.Fatal(err)
	}
	for name, tlsID := range map[string]*mtls.Identity{"plain": nil, "tls": id} {
		t.Run(name, func(t *testing.T) {
			tr, err := raftTransport(ServeConfig{ID: "w0", TLS: tlsID, Logger: slog.New(slog.DiscardHandler)}, "127.0.0.1:0", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			// A peer that does not listen: a pipeline would dial it and fail
			// with ECONNREFUSED.
			if _, err := tr.AppendEntriesPipeline("w1", "127.0.0.1:1"); !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
				t.Fatalf("AppendEntriesPipeline: %v, want %v", err, raft.ErrPipelineReplicationNotSupported)
			}
		})
	}
}
