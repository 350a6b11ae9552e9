package witness

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// op is what a raft log entry asks the FSM to do. The zero op is invalid.
type op int

const (
	_ op = iota // the zero op is invalid
	// opAcquire is the compare-and-set of decide.
	opAcquire
	// opRead returns the holder. Reads go through the log so that they are
	// linearizable: a leader cut off from the quorum cannot answer them.
	opRead
)

// command is one raft log entry's payload.
type command struct {
	Op         op     `json:"op"`
	Generation uint64 `json:"generation,omitempty"`
	Owner      string `json:"owner,omitempty"`
}

// fsmResult is what fsm.Apply returns for a command.
type fsmResult struct {
	Holder Claim
	Won    bool
	Err    error // a malformed command; cannot happen with this package's leaders
}

// fsm is the replicated state of the raft witness: the holder of the
// current generation. raft calls Apply, Snapshot and Restore from its FSM
// goroutine, one at a time; mu lets the node read the holder for logs.
type fsm struct {
	mu     sync.Mutex // protects holder
	holder Claim
}

// snapshotVersion is the version of the snapshot encoding.
const snapshotVersion = 1

type fsmSnapshotData struct {
	Version int   `json:"version"`
	Holder  Claim `json:"holder"`
}

// Apply implements raft.FSM. It is deterministic: the same log gives the
// same holder on every node.
func (f *fsm) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fsmResult{Err: fmt.Errorf("log entry %d: decoding command: %w", l.Index, err)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch c.Op {
	case opAcquire:
		if err := validateRequest(c.Generation, c.Owner); err != nil {
			return fsmResult{Holder: f.holder, Err: fmt.Errorf("log entry %d: %w", l.Index, err)}
		}
		next, won := decide(f.holder, c.Generation, c.Owner)
		f.holder = next
		return fsmResult{Holder: next, Won: won}
	case opRead:
		return fsmResult{Holder: f.holder}
	}
	return fsmResult{Holder: f.holder, Err: fmt.Errorf("log entry %d: unknown op %d", l.Index, c.Op)}
}

// Snapshot implements raft.FSM.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fsmSnapshot{Version: snapshotVersion, Holder: f.holder}, nil
}

// Restore implements raft.FSM.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s fsmSnapshotData
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("restoring witness snapshot: %w", err)
	}
	if s.Version != snapshotVersion {
		return fmt.Errorf("restoring witness snapshot: version %d, this build reads %d", s.Version, snapshotVersion)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.holder = s.Holder
	return nil
}

func (f *fsm) current() Claim {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.holder
}

// fsmSnapshot is the plain-data snapshot of the holder.
type fsmSnapshot fsmSnapshotData

// Persist implements raft.FSMSnapshot.
func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(fsmSnapshotData(s)); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("writing witness snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot; the snapshot holds no resources.
func (fsmSnapshot) Release() {}
