package node

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
)

// statusLines writes line() to w every interval until stopped, unless it
// says the same as last time (an idle guest). A zero interval or a nil w
// writes nothing.
func statusLines(w io.Writer, every time.Duration, line func() string) (stop func()) {
	if every <= 0 || w == nil {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		last := ""
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if l := line(); l != last {
					fmt.Fprintln(w, l)
					last = l
				}
			}
		}
	}()
	return func() { close(done) }
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
