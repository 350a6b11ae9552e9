package node

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"text/tabwriter"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ftckpt/ftckpt/witness"
)

// A cluster's state at a glance (ftckpt status): who the witness says is
// primary, and each node's own view, asked through its control socket or
// read from its metrics.

// Cluster is what AskCluster found. Plain data.
type Cluster struct {
	// Arbiter names the witness; Holder is its current claim, or
	// WitnessErr why it could not be read.
	Arbiter    string
	Holder     witness.Claim
	WitnessErr error
	// Nodes are the nodes asked, in order.
	Nodes []ClusterNode
}

// ClusterNode is one node's answer: its Status, or Err.
type ClusterNode struct {
	// Where is the node's control socket path or metrics URL.
	Where  string
	Status Status
	Err    error
}

// AskCluster asks arb (nil: none) for the current generation and every
// node of nodes for its status, all at once: a node is a control socket
// path, or the http:// URL of its metrics (/metrics is added to a URL
// without a path). ctx bounds the whole.
func AskCluster(ctx context.Context, arbiter string, arb witness.Arbiter, nodes []string) Cluster {
	c := Cluster{Arbiter: arbiter, Nodes: make([]ClusterNode, len(nodes))}
	var wg sync.WaitGroup
	if arb != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Holder, c.WitnessErr = arb.Current(ctx)
		}()
	}
	for i, where := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn := &c.Nodes[i]
			cn.Where = where
			if strings.HasPrefix(where, "http://") || strings.HasPrefix(where, "https://") {
				cn.Status, cn.Err = scrapeStatus(ctx, where)
				return
			}
			resp, err := Ask(ctx, where, Request{Op: "status"})
			if err == nil && resp.Status == nil {
				err = fmt.Errorf("%s answered without a status", where)
			}
			if err != nil {
				cn.Err = err
				return
			}
			cn.Status = *resp.Status
		}()
	}
	wg.Wait()
	return c
}

// scrapeStatus reads a node's status from its metrics at url.
func scrapeStatus(ctx context.Context, url string) (Status, error) {
	var st Status
	if rest := strings.SplitN(url, "://", 2)[1]; !strings.Contains(rest, "/") {
		url += "/metrics"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return st, fmt.Errorf("reading the metrics at %s: %w", url, err)
	}
	info := fams["ftckpt_node_info"]
	if info == nil || len(info.GetMetric()) == 0 {
		return st, fmt.Errorf("%s: not an ftckpt node's metrics", url)
	}
	for _, l := range info.GetMetric()[0].GetLabel() {
		switch l.GetName() {
		case "mode":
			st.Mode = l.GetValue()
		case "role":
			st.Started = l.GetValue()
		case "machine":
			st.Machine = l.GetValue()
		case "guest":
			st.Guest = l.GetValue()
		}
	}
	for _, m := range fams["ftckpt_role"].GetMetric() {
		if m.GetGauge().GetValue() == 1 && len(m.GetLabel()) > 0 {
			st.Role = m.GetLabel()[0].GetValue()
		}
	}
	one := func(name string) (float64, bool) {
		f := fams[name]
		if f == nil || len(f.GetMetric()) == 0 {
			return 0, false
		}
		return metricValue(f.GetMetric()[0]), true
	}
	v := func(name string) uint64 { x, _ := one(name); return uint64(x) }
	st.Generation, st.Failovers, st.BackupsLost = v("ftckpt_generation"), v("ftckpt_failovers_total"), v("ftckpt_backups_lost_total")
	st.InSync, st.Paused = v("ftckpt_in_sync") == 1, v("ftckpt_guest_paused") == 1
	if lag, ok := one("ftckpt_checkpoint_backup_lag_epochs"); ok {
		st.Checkpoint = &CheckpointStatus{Lag: uint64(lag)}
	} else if e, ok := one("ftckpt_checkpoint_committed_epoch"); ok {
		st.Checkpoint = &CheckpointStatus{Committed: uint64(e), CommitGen: v("ftckpt_checkpoint_committed_generation"), BackupState: "committed"}
		if v("ftckpt_checkpoint_backup_syncing") == 1 {
			st.Checkpoint.BackupState = "syncing"
		}
	}
	if _, ok := one("ftckpt_replay_log_entries_total"); ok {
		st.Replay = &ReplayStatus{Entries: v("ftckpt_replay_log_entries_total"), Acked: v("ftckpt_replay_acked_lsn")}
	} else if _, ok := one("ftckpt_replay_received_lsn"); ok {
		st.Replay = &ReplayStatus{Received: v("ftckpt_replay_received_lsn"), Replayed: v("ftckpt_replay_replayed_entries_total")}
	}
	return st, nil
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// Table renders c for a person: the witness's line, then a row per node
// with its role, generation, sync, lag and health.
func (c Cluster) Table() string {
	var b strings.Builder
	switch {
	case c.Arbiter == "":
	case c.WitnessErr != nil:
		fmt.Fprintf(&b, "witness %s: UNREACHABLE: %v\n", c.Arbiter, c.WitnessErr)
	case c.Holder.Generation == 0:
		fmt.Fprintf(&b, "witness %s: generation 0 (no primary has ever won)\n", c.Arbiter)
	default:
		fmt.Fprintf(&b, "witness %s: generation %d held by %s\n", c.Arbiter, c.Holder.Generation, c.Holder.Owner)
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tMODE\tROLE\tGEN\tIN SYNC\tLAG\tHEALTH")
	for _, n := range c.Nodes {
		if n.Err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\tDOWN: %v\n", n.Where, n.Err)
			continue
		}
		s := n.Status
		sync := "no"
		if s.InSync {
			sync = "yes"
		}
		if s.Role == "alone" {
			sync = "-"
		}
		gen := "-"
		if s.Generation > 0 {
			gen = fmt.Sprint(s.Generation)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Where, s.Mode, s.Role, gen, sync, lag(s), c.health(s))
	}
	tw.Flush()
	return b.String()
}

// lag is how far a node's backup is behind, as its status says.
func lag(s Status) string {
	switch {
	case s.Checkpoint != nil && s.Checkpoint.BackupState != "" && s.Role == "backup":
		return fmt.Sprintf("holds epoch %d", s.Checkpoint.Committed)
	case s.Checkpoint != nil && s.Role == "primary" && s.InSync:
		return fmt.Sprintf("%d epochs", s.Checkpoint.Lag)
	case s.Replay != nil && s.Role == "primary" && s.InSync:
		return fmt.Sprintf("%d entries", s.Replay.Entries-min(s.Replay.Acked, s.Replay.Entries))
	case s.Replay != nil && s.Role == "backup":
		return fmt.Sprintf("%d entries", s.Replay.Received-min(s.Replay.Replayed, s.Replay.Received))
	}
	return "-"
}

// health judges a node against the witness.
func (c Cluster) health(s Status) string {
	var notes []string
	switch {
	case s.Role == "primary" && c.WitnessErr == nil && c.Holder.Generation > s.Generation:
		notes = append(notes, fmt.Sprintf("FENCED: generation %d is newer", c.Holder.Generation))
	case s.Role == "primary" && !s.InSync:
		notes = append(notes, "UNPROTECTED: no backup in sync")
	case s.Role == "backup" && !s.InSync:
		notes = append(notes, "not in sync yet")
	case s.Role == "backup" && s.Checkpoint != nil && c.WitnessErr == nil && c.Holder.Generation > s.Checkpoint.CommitGen && s.Checkpoint.CommitGen > 0:
		notes = append(notes, fmt.Sprintf("STALE: holds generation %d's state, the witness is at %d", s.Checkpoint.CommitGen, c.Holder.Generation))
	}
	if s.Paused {
		notes = append(notes, "PAUSED by the operator")
	}
	if len(notes) == 0 {
		return "ok"
	}
	return strings.Join(notes, "; ")
}
