package node_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/checkpoint"
	"github.com/ftckpt/ftckpt/checkpoint/linktest"
	"github.com/ftckpt/ftckpt/modes/node"
	"github.com/ftckpt/ftckpt/modes/node/nodetest"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
	"github.com/ftckpt/ftckpt/witness"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The operator's surface of a running pair: its Prometheus metrics and
// its control socket (ftckpt ctl).

// scrape reads n's metrics over HTTP.
func scrape(t *testing.T, n *node.Node) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + n.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// value is the value of the series of family name whose labels include
// labels ("k=v"); -1 if there is none. A histogram's value is its count.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			found := false
			for _, lp := range m.GetLabel() {
				found = found || lp.GetName() == k && lp.GetValue() == v
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return -1
}

// requireFamilies fails the test unless each family has a series.
func requireFamilies(t *testing.T, who string, fams map[string]*dto.MetricFamily, names ...string) {
	t.Helper()
	for _, name := range names {
		if f := fams[name]; f == nil || len(f.GetMetric()) == 0 {
			t.Errorf("the %s's metrics lack %s", who, name)
		}
	}
}

var (
	commonFamilies = []string{"ftckpt_node_info", "ftckpt_role", "ftckpt_generation", "ftckpt_in_sync",
		"ftckpt_failovers_total", "ftckpt_backups_lost_total", "ftckpt_guest_paused", "go_goroutines"}
	outputFamilies = []string{"ftckpt_output_delay_seconds", "ftckpt_outputs_held", "ftckpt_outputs_held_bytes",
		"ftckpt_outputs_waiting", "ftckpt_outputs_released_total", "ftckpt_outputs_released_bytes_total", "ftckpt_outputs_dropped_total",
		"ftckpt_witness_round_trip_seconds"}
	checkpointPrimaryFamilies = []string{"ftckpt_checkpoint_pause_seconds", "ftckpt_checkpoint_pause_part_seconds",
		"ftckpt_checkpoint_dirty_pages", "ftckpt_checkpoint_epochs_total", "ftckpt_checkpoint_acked_epoch",
		"ftckpt_checkpoint_backup_lag_epochs", "ftckpt_checkpoint_epoch_seconds", "ftckpt_checkpoint_page_bytes_total",
		"ftckpt_checkpoint_wire_bytes_total", "ftckpt_checkpoint_resyncs_total", "ftckpt_sync_disk_blocks_kept", "ftckpt_sync_memory_pages_kept"}
	checkpointBackupFamilies = []string{"ftckpt_checkpoint_committed_epoch", "ftckpt_checkpoint_committed_generation",
		"ftckpt_checkpoint_backup_syncing"}
	replayPrimaryFamilies = []string{"ftckpt_replay_exits_total", "ftckpt_replay_landings_total", "ftckpt_replay_log_entries_total",
		"ftckpt_replay_log_bytes_total", "ftckpt_replay_log_batches_total", "ftckpt_replay_acked_lsn",
		"ftckpt_replay_backup_lag_entries", "ftckpt_replay_syncs_total", "ftckpt_replay_resyncs_total",
		"ftckpt_replay_precopied_pages_total", "ftckpt_replay_rx_dropped_total", "ftckpt_sync_disk_blocks_kept", "ftckpt_sync_memory_pages_kept"}
	replayBackupFamilies = []string{"ftckpt_replay_received_lsn", "ftckpt_replay_replayed_entries_total",
		"ftckpt_replay_backup_lag_entries", "ftckpt_replay_divergences_total", "ftckpt_replay_breakpoint_visits_total",
		"ftckpt_replay_checkpoints_applied_total", "ftckpt_replay_precopy_rounds_total"}
)

// TestMetricsOfAPair scrapes both nodes of a pair of the software
// machine's kv guest, in each mode, under the client's requests: every
// family of the node's mode and role is there, the figures move, and
// after the primary's crash the backup reports itself primary of
// generation 2 with one failover.
func TestMetricsOfAPair(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			o := nodetest.Options(t, mode, node.MachineSim, "kv")
			o.Metrics = "127.0.0.1:0"
			p := nodetest.Start(t, o)
			c := nodetest.NewKVClient(t, p.Addr(), mode)
			p.WaitInSync()
			for range 5 {
				c.Incr()
			}
			pf, bf := scrape(t, p.Primary), scrape(t, p.Backup)
			requireFamilies(t, "primary", pf, commonFamilies...)
			requireFamilies(t, "primary", pf, outputFamilies...)
			requireFamilies(t, "backup", bf, commonFamilies...)
			if mode == node.ModeCheckpoint {
				requireFamilies(t, "primary", pf, checkpointPrimaryFamilies...)
				requireFamilies(t, "backup", bf, checkpointBackupFamilies...)
				if v := value(pf, "ftckpt_checkpoint_pause_part_seconds", "part=copy"); v < 1 {
					t.Errorf("the copy part of the pause has %v observations", v)
				}
			} else {
				requireFamilies(t, "primary", pf, replayPrimaryFamilies...)
				requireFamilies(t, "backup", bf, replayBackupFamilies...)
			}
			for _, check := range []struct {
				fams  map[string]*dto.MetricFamily
				name  string
				label []string
				want  float64
			}{
				{pf, "ftckpt_role", []string{"role=primary"}, 1},
				{pf, "ftckpt_generation", nil, 1},
				{pf, "ftckpt_in_sync", nil, 1},
				{bf, "ftckpt_role", []string{"role=backup"}, 1},
				{bf, "ftckpt_generation", nil, 0},
				{pf, "ftckpt_node_info", []string{"mode=" + mode.String(), "role=primary", "machine=sim", "guest=kv"}, 1},
			} {
				if got := value(check.fams, check.name, check.label...); got != check.want {
					t.Errorf("%s%v = %v, want %v", check.name, check.label, got, check.want)
				}
			}
			if v := value(pf, "ftckpt_outputs_released_total"); v < 5 {
				t.Errorf("%v outputs released after 5 replies", v)
			}
			if v := value(pf, "ftckpt_output_delay_seconds"); v < 5 {
				t.Errorf("%v output delays observed after 5 replies", v)
			}
			if v := value(pf, "ftckpt_witness_round_trip_seconds", "op=acquire"); v < 1 {
				t.Errorf("%v witness acquires observed", v)
			}

			p.CrashPrimary()
			p.WaitLive()
			c.Resend = 100 * time.Millisecond
			c.Incr()
			bf = scrape(t, p.Backup)
			for name, want := range map[string]float64{"ftckpt_failovers_total": 1, "ftckpt_generation": 2} {
				if got := value(bf, name); got != want {
					t.Errorf("the live backup's %s = %v, want %v", name, got, want)
				}
			}
			if got := value(bf, "ftckpt_role", "role=primary"); got != 1 {
				t.Errorf("the live backup's role primary = %v, want 1", got)
			}
		})
	}
}

// TestKVMMetricsOfAPair is TestMetricsOfAPair's checkpoint primary on
// KVM, whose pause has all its parts.
func TestKVMMetricsOfAPair(t *testing.T) {
	vmmtest.RequireKVM(t)
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineKVM, "kv")
	o.Metrics = "127.0.0.1:0"
	p := nodetest.Start(t, o)
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	for range 3 {
		c.Incr()
	}
	pf := scrape(t, p.Primary)
	requireFamilies(t, "primary", pf, append(append(commonFamilies, outputFamilies...), checkpointPrimaryFamilies...)...)
	for _, part := range []string{"stop", "harvest", "copy", "state", "resume"} {
		if v := value(pf, "ftckpt_checkpoint_pause_part_seconds", "part="+part); v < 1 {
			t.Errorf("pause part %s: %v observations", part, v)
		}
	}
	requireFamilies(t, "backup", scrape(t, p.Backup), checkpointBackupFamilies...)
}

// ask sends a request to the control socket at path.
func ask(t *testing.T, path string, op string, args ...string) (node.Response, error) {
	t.Helper()
	req := node.Request{Op: op}
	if len(args) > 0 {
		req.Name = args[0]
	}
	if len(args) > 1 {
		req.Value = args[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), vmmtest.Bound)
	defer cancel()
	return node.Ask(ctx, path, req)
}

// mustAsk is ask that fails the test on an error.
func mustAsk(t *testing.T, path string, op string, args ...string) node.Response {
	t.Helper()
	resp, err := ask(t, path, op, args...)
	if err != nil {
		t.Fatalf("%s %v: %v", op, args, err)
	}
	return resp
}

// refused checks that the request is refused with an error saying want.
func refused(t *testing.T, path, want string, op string, args ...string) {
	t.Helper()
	_, err := ask(t, path, op, args...)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s %v: got %v, want an error saying %q", op, args, err, want)
	}
}

// controlPath is a control socket path in a short temporary directory (a
// Unix socket's path is at most 107 bytes).
func controlPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "ftckpt-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "primary.sock")
}

// TestControlCheckpointPair drives every control request against a
// checkpoint-mode pair of the software machine's kv guest, and the bad
// ones: status on both nodes; set epoch (fixed, auto, and nonsense);
// pause and resume (the paused guest dirties nothing while checkpoints
// go on, and answers once resumed); detach-backup (the primary takes
// generation 2 and the backup stays back). TestControlFailover has
// failover.
func TestControlCheckpointPair(t *testing.T) {
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineSim, "kv")
	o.Control = controlPath(t)
	p := nodetest.Start(t, o)
	pc, bc := o.Control, o.Control+".backup"
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	c.Incr()

	for _, path := range []string{pc, bc} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s is %v, want a socket of mode 0600", path, fi.Mode())
		}
	}
	var st node.Status
	vmmtest.WaitUntil(t, "the primary's status in sync", func() bool {
		st = *mustAsk(t, pc, "status").Status
		return st.InSync
	})
	if st.Role != "primary" || st.Generation != 1 || st.Checkpoint == nil || st.Checkpoint.Epochs == 0 || st.Outputs == nil {
		t.Errorf("primary status %+v", st)
	}
	t.Logf("ftckpt ctl status:\n%s", st.Text())
	bst := *mustAsk(t, bc, "status").Status
	if bst.Role != "backup" || bst.Generation != 0 || bst.Checkpoint == nil || bst.Checkpoint.BackupState != "committed" {
		t.Errorf("backup status %+v", bst)
	}

	// Bad requests, each with a clear error.
	refused(t, pc, "want a duration", "set", "epoch", "banana")
	refused(t, pc, "want a duration", "set", "epoch", "0s")
	refused(t, pc, "want a duration", "set", "epoch", "2h")
	refused(t, pc, "the only setting is epoch", "set", "speed", "11")
	refused(t, pc, `op "reboot"`, "reboot")
	refused(t, pc, "no op", "")
	refused(t, pc, "takes no arguments", "status", "x")
	refused(t, bc, "not a checkpoint primary", "set", "epoch", "10ms")
	refused(t, bc, "backup", "pause")
	refused(t, bc, "not a checkpoint primary", "detach-backup")
	refused(t, pc, "not paused", "resume")
	refused(t, pc, "failover takes no arguments", "failover", "now")
	refused(t, bc, "not a primary", "failover")
	if got := rawRequest(t, pc, "not json\n"); !strings.Contains(got, "one JSON object") {
		t.Errorf("a line that is not JSON: %s", got)
	}
	if got := rawRequest(t, pc, `{"v":2,"op":"status"}`+"\n"); !strings.Contains(got, "version 2") {
		t.Errorf("a request of version 2: %s", got)
	}
	if got := rawRequest(t, pc, `{"v":1,"op":"status","force":true}`+"\n"); !strings.Contains(got, "unknown field") {
		t.Errorf("a request with an unknown field: %s", got)
	}

	// set epoch.
	mustAsk(t, pc, "set", "epoch", "10ms")
	vmmtest.WaitUntil(t, "the epoch to be 10ms", func() bool {
		st := mustAsk(t, pc, "status").Status
		return time.Duration(st.Epoch) == 10*time.Millisecond && !st.EpochAuto
	})
	if st := mustAsk(t, pc, "set", "epoch", "auto").Status; !st.EpochAuto {
		t.Errorf("after set epoch auto: %+v", st)
	}

	// pause and resume.
	mustAsk(t, pc, "pause")
	refused(t, pc, "paused already", "pause")
	if st := mustAsk(t, pc, "status").Status; !st.Paused {
		t.Error("status does not say paused")
	}
	paused := time.Now()
	prim := p.Primary.Parts().CheckpointPrimary
	vmmtest.WaitUntil(t, "4 epochs taken while paused", func() bool {
		return len(prim.Stats.Pauses(paused, time.Now().Add(time.Hour))) >= 4
	})
	// The first checkpoint after the pause carries what was dirtied
	// before it; the others, nothing.
	for _, pause := range prim.Stats.Pauses(paused, time.Now().Add(time.Hour))[1:] {
		if pause.Dirty != 0 {
			t.Errorf("a checkpoint of the paused guest captured %d dirty pages", pause.Dirty)
		}
	}
	mustAsk(t, pc, "resume")
	c.Incr() // the resumed guest answers

	// detach-backup.
	mustAsk(t, pc, "detach-backup")
	vmmtest.WaitUntil(t, "the primary to hold generation 2", func() bool {
		who, gen := p.Holder()
		return who == "primary" && gen == 2
	})
	vmmtest.WaitUntil(t, "the backup to stay back", func() bool {
		return p.Log.Has("backup", "another candidate won; staying backup")
	})
	vmmtest.WaitUntil(t, "the primary's status to say it lost its backup", func() bool {
		st := mustAsk(t, pc, "status").Status
		return st.BackupsLost == 1 && !st.InSync && st.Generation == 2
	})
	refused(t, pc, "not replicating", "detach-backup")
	c.Incr() // alone, it answers
	if p.IsLive() {
		t.Fatal("the detached backup went live")
	}
}

// TestControlReplayPair drives the control requests against a replay-mode
// pair: status on both nodes, set epoch (refused: no epochs), pause and
// resume, detach-backup, and the bad ones.
func TestControlReplayPair(t *testing.T) {
	o := nodetest.Options(t, node.ModeReplay, node.MachineSim, "kv")
	o.Control = controlPath(t)
	p := nodetest.Start(t, o)
	pc, bc := o.Control, o.Control+".backup"
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	c.Incr()
	var st node.Status
	vmmtest.WaitUntil(t, "the primary's status in sync", func() bool {
		st = *mustAsk(t, pc, "status").Status
		return st.InSync
	})
	if st.Role != "primary" || st.Replay == nil || st.Replay.Entries == 0 {
		t.Errorf("primary status %+v", st)
	}
	t.Logf("ftckpt ctl status:\n%s", st.Text())
	if st := mustAsk(t, bc, "status").Status; st.Role != "backup" || st.Replay == nil {
		t.Errorf("backup status %+v", st)
	}
	refused(t, pc, "replay mode has no epochs", "set", "epoch", "10ms")
	refused(t, bc, "this node is a backup", "pause")

	// pause and resume: a request sent while paused is answered once
	// resumed, one machine's.
	mustAsk(t, pc, "pause")
	refused(t, pc, "paused already", "pause")
	if st := mustAsk(t, pc, "status").Status; !st.Paused {
		t.Error("status does not say paused")
	}
	c.Send()
	mustAsk(t, pc, "resume")
	refused(t, pc, "not paused", "resume")
	for range 3 {
		c.Incr()
	}
	if d := mustAsk(t, bc, "status").Status.Replay.Divergences; d != 0 {
		t.Errorf("the backup found %d divergences", d)
	}
	refused(t, bc, "not a primary", "failover")
	refused(t, bc, "not a primary", "detach-backup")

	t.Log(mustAsk(t, pc, "detach-backup").Message)
	if who, gen := p.Holder(); who != "primary" || gen != 2 {
		t.Fatalf("generation %d is the %s's, want generation 2 the primary's", gen, who)
	}
	vmmtest.Closed(t, "the detached backup to end", p.Backup.Done())
	if err := p.Backup.Wait(); !errors.Is(err, witness.ErrLost) {
		t.Fatalf("the detached backup ended with %v, want a lost contest", err)
	}
	if st := mustAsk(t, pc, "status").Status; st.InSync || st.BackupsLost != 1 || st.Generation != 2 {
		t.Errorf("the primary's status after detach-backup %+v", st)
	}
	refused(t, pc, "no backup to detach", "detach-backup")
	refused(t, pc, "runs alone: it has no backup to hand over to", "failover")
	c.Incr() // alone, it answers
}

// controlledPair starts a pair of o's nodes, each with a control socket
// (the primary's and the backup's paths are returned), and a kv client,
// and waits until the primary's status says it is in sync.
func controlledPair(t *testing.T, o node.Options) (p *nodetest.Pair, pc, bc string, c *nodetest.KVClient) {
	t.Helper()
	o.Control = controlPath(t)
	p = nodetest.Start(t, o)
	pc, bc = o.Control, o.Control+".backup"
	c = nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	vmmtest.WaitUntil(t, "the primary in sync", func() bool { return mustAsk(t, pc, "status").Status.InSync })
	return p, pc, bc, c
}

// TestControlReplayFailover hands a replay-mode pair's guest over on
// purpose: the primary ships its whole log and ends, the backup replays
// it and goes live with generation 2, and the client's counters go on,
// one machine's (the backup may repeat the last replies: replay mode).
func TestControlReplayFailover(t *testing.T) {
	o := kvOptions(t, node.ModeReplay, node.MachineSim) // a failure timeout past the backup's wait for the port (TestStoppedPrimaryHandsOver)
	p, pc, bc, c := controlledPair(t, o)
	for range 10 {
		c.Incr()
	}
	t.Log(mustAsk(t, pc, "failover").Message)
	vmmtest.Closed(t, "the primary to end", p.Primary.Done())
	if err := p.Primary.Wait(); !errors.Is(err, node.ErrHandedOver) {
		t.Fatalf("the primary ended with %v, want ErrHandedOver", err)
	}
	p.WaitLive()
	if who, gen := p.Holder(); who != "backup" || gen != 2 {
		t.Fatalf("generation %d is the %s's, want generation 2 the backup's", gen, who)
	}
	c.Resend = 100 * time.Millisecond
	for range 5 {
		c.Incr()
	}
	nodetest.CheckJournal(t, p.Options.Disk, o.Machine, c.LastSeq())
	if st := mustAsk(t, bc, "status").Status; st.Role != "primary" || st.Generation != 2 {
		t.Errorf("the live backup's status %+v", st)
	}
}

// TestControlFailover hands a checkpoint-mode pair's guest over on
// purpose (ftckpt ctl failover), under the client's requests: the primary
// ends having released every output and dropped none, the backup goes
// live with generation 2, and the client's counters go on, one machine's;
// a failover of the live backup, alone, is refused.
func TestControlFailover(t *testing.T) {
	failoverOnPurpose(t, kvOptions(t, node.ModeCheckpoint, node.MachineSim))
}

// TestKVMControlFailover is TestControlFailover with the C kv guest on
// KVM, two vCPUs.
func TestKVMControlFailover(t *testing.T) {
	vmmtest.RequireKVM(t)
	failoverOnPurpose(t, kvOptions(t, node.ModeCheckpoint, node.MachineKVM))
}

// failoverOnPurpose runs a pair of o's nodes and hands the guest over.
func failoverOnPurpose(t *testing.T, o node.Options) {
	p, pc, bc, c := controlledPair(t, o)
	for range 10 {
		c.Incr()
	}
	before := c.LastSeq()
	resp := mustAsk(t, pc, "failover")
	t.Log(resp.Message)
	vmmtest.Closed(t, "the primary to end", p.Primary.Done())
	if err := p.Primary.Wait(); !errors.Is(err, node.ErrHandedOver) {
		t.Fatalf("the primary ended with %v, want ErrHandedOver", err)
	}
	if s := p.Primary.Parts().Outputs.Stats(); s.HeldOutputs != 0 || s.Dropped != 0 || s.Failed != nil {
		t.Fatalf("the old primary's outputs: %d held, %d dropped, failed %v", s.HeldOutputs, s.Dropped, s.Failed)
	}
	p.WaitLive()
	if who, gen := p.Holder(); who != "backup" || gen != 2 {
		t.Fatalf("generation %d is the %s's, want generation 2 the backup's", gen, who)
	}
	for range 5 {
		c.Incr()
	}
	t.Logf("replies %d before the failover, %d after 5 more requests", before, c.LastSeq())
	nodetest.CheckJournal(t, p.Options.Disk, o.Machine, c.LastSeq())
	if st := mustAsk(t, bc, "status").Status; st.Role != "primary" || st.Generation != 2 || st.Failovers != 1 || st.Peer != "" {
		t.Errorf("the live backup's status %+v", st)
	}
	refused(t, bc, "no backup to hand over to", "failover")
}

// TestHeldGuestStaysHeldAcrossFailover: a guest the operator paused stays
// paused on the backup that takes over, in both modes, whether the primary
// hands it over (ftckpt ctl failover) or crashes once ftckpt ctl pause
// said the backup had heard: a request sent while paused gets no reply
// until ftckpt ctl resume on the new primary, whose status says paused;
// then the counters go on, one machine's.
func TestHeldGuestStaysHeldAcrossFailover(t *testing.T) {
	heldAcrossFailover(t, node.MachineSim)
}

// TestKVMHeldGuestStaysHeldAcrossFailover is
// TestHeldGuestStaysHeldAcrossFailover with the C kv guest on KVM (two
// vCPUs in checkpoint mode, whose backup's machine starts paused).
func TestKVMHeldGuestStaysHeldAcrossFailover(t *testing.T) {
	vmmtest.RequireKVM(t)
	heldAcrossFailover(t, node.MachineKVM)
}

func heldAcrossFailover(t *testing.T, machine node.Machine) {
	for _, mode := range modes {
		for _, crash := range []bool{false, true} {
			name := mode.String() + map[bool]string{false: "/handed-over", true: "/crashed"}[crash]
			t.Run(name, func(t *testing.T) {
				o := kvOptions(t, mode, machine)
				p, pc, bc, c := controlledPair(t, o)
				for range 3 {
					c.Incr()
				}
				msg := mustAsk(t, pc, "pause").Message
				t.Log(msg)
				if !strings.Contains(msg, "the backup keeps it paused") {
					t.Fatalf("pause says %q", msg)
				}
				// A replay backup says so once it has replayed the entry
				// (it acknowledges the log as it receives it).
				vmmtest.WaitUntil(t, "the backup's status to say paused", func() bool { return mustAsk(t, bc, "status").Status.Paused })
				c.Send()
				if c.Await(300 * time.Millisecond) {
					t.Fatal("the paused guest answered")
				}
				if crash {
					p.CrashPrimary()
				} else {
					t.Log(mustAsk(t, pc, "failover").Message)
					vmmtest.Closed(t, "the primary to end", p.Primary.Done())
				}
				p.WaitLive() // its guest held before it started
				if st := mustAsk(t, bc, "status").Status; st.Role != "primary" || !st.Paused {
					t.Fatalf("the live backup's status does not say a paused primary: %+v", st)
				}
				if c.Await(500 * time.Millisecond) {
					t.Fatal("the guest answered on the new primary before it was resumed")
				}
				mustAsk(t, bc, "resume")
				c.Resend = 100 * time.Millisecond
				for range 3 {
					c.Incr()
				}
				nodetest.CheckJournal(t, p.Options.Disk, o.Machine, c.LastSeq())
			})
		}
	}
}

// TestHoldAcrossCrashesAtRandomMoments pauses and resumes a pair's guest
// a random number of times, then crashes the primary, in each mode, 6
// times: right after the last request answered (the backup had heard), or
// a random moment into one (in flight). The backup gone live holds the
// guest exactly as the last answered request left it, or, after a request
// in flight, either way; and in every case its status says what the guest
// does: paused, a request gets no reply until ftckpt ctl resume; running,
// it answers. The counters go on, one machine's, with the journal.
func TestHoldAcrossCrashesAtRandomMoments(t *testing.T) {
	holdAcrossCrashes(t, node.MachineSim, 6)
}

// TestKVMHoldAcrossCrashesAtRandomMoments is
// TestHoldAcrossCrashesAtRandomMoments with the C kv guest on KVM, twice
// in each mode.
func TestKVMHoldAcrossCrashesAtRandomMoments(t *testing.T) {
	vmmtest.RequireKVM(t)
	holdAcrossCrashes(t, node.MachineKVM, 2)
}

func holdAcrossCrashes(t *testing.T, machine node.Machine, rounds int) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			seed := time.Now().UnixNano()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewSource(seed))
			for i := range rounds {
				t.Run(strconv.Itoa(i), func(t *testing.T) {
					holdThenCrash(t, rng, kvOptions(t, mode, machine))
				})
			}
		})
	}
}

func holdThenCrash(t *testing.T, rng *rand.Rand, o node.Options) {
	p, pc, bc, c := controlledPair(t, o)
	c.Incr()
	paused := false
	for range rng.Intn(4) {
		op := map[bool]string{false: "pause", true: "resume"}[paused]
		if msg := mustAsk(t, pc, op).Message; !strings.Contains(msg, "the backup ") {
			t.Fatalf("%s says %q", op, msg)
		}
		paused = !paused
	}
	inFlight := rng.Intn(2) == 0
	answered := make(chan struct{})
	if inFlight {
		op := map[bool]string{false: "pause", true: "resume"}[paused]
		go func() { ask(t, pc, op); close(answered) }() // whatever it answers
		time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
	} else {
		close(answered)
	}
	t.Logf("paused %v, a request in flight %v", paused, inFlight)
	p.CrashPrimary()
	<-answered // the crashed node's socket is closed
	p.WaitLive()
	st := mustAsk(t, bc, "status").Status
	if !inFlight && st.Paused != paused {
		t.Fatalf("the live backup says paused %v; the last request answered left it paused %v", st.Paused, paused)
	}
	c.Resend = 100 * time.Millisecond
	if st.Paused {
		c.Send()
		if c.Await(300 * time.Millisecond) {
			t.Fatal("the live backup says paused, and its guest answered")
		}
		mustAsk(t, bc, "resume")
	}
	for range 3 {
		c.Incr()
	}
	nodetest.CheckJournal(t, p.Options.Disk, o.Machine, c.LastSeq())
}

// TestResumeReachesTheBackup: a guest paused then resumed runs on the
// backup that takes over after a crash, in both modes, once ftckpt ctl
// resume has said the backup heard.
func TestResumeReachesTheBackup(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			o := kvOptions(t, mode, node.MachineSim)
			p, pc, bc, c := controlledPair(t, o)
			c.Incr()
			mustAsk(t, pc, "pause")
			msg := mustAsk(t, pc, "resume").Message
			t.Log(msg)
			if !strings.Contains(msg, "the backup runs it too") {
				t.Fatalf("resume says %q", msg)
			}
			p.CrashPrimary()
			p.WaitLive()
			if st := mustAsk(t, bc, "status").Status; st.Paused {
				t.Fatalf("the backup went live paused after a resume it had heard of: %+v", st)
			}
			c.Resend = 100 * time.Millisecond
			for range 3 {
				c.Incr()
			}
		})
	}
}

// TestPauseSaysWhenTheBackupHasNotHeard: with the backup's acks dropped
// on the way (its heartbeats pass), ftckpt ctl pause still answers, after
// its 10 s wait, saying that the backup has not acknowledged the hold,
// over the control socket (whose deadline must outlast the wait); a status
// asked meanwhile is answered while the pause waits.
func TestPauseSaysWhenTheBackupHasNotHeard(t *testing.T) {
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineSim, "kv")
	o.Control = controlPath(t)
	link := linktest.New()
	var dropAcks atomic.Bool
	link.SetFilter(linktest.Down, linktest.Frames(func(typ uint16, _ []byte) bool {
		return !dropAcks.Load() || checkpoint.MsgType(typ) != checkpoint.MsgAck
	}))
	p := nodetest.StartOn(t, o, link)
	p.WaitInSync()
	vmmtest.WaitUntil(t, "the primary in sync", func() bool { return mustAsk(t, o.Control, "status").Status.InSync })
	dropAcks.Store(true)
	paused := make(chan string, 1)
	go func() {
		resp, err := ask(t, o.Control, "pause")
		if err != nil {
			resp.Message = err.Error()
		}
		paused <- resp.Message
	}()
	vmmtest.WaitUntil(t, "the guest paused", func() bool { return p.Primary.Status().Paused })
	if st := mustAsk(t, o.Control, "status").Status; !st.Paused {
		t.Fatalf("status while the pause waits: %+v", st)
	}
	select {
	case msg := <-paused:
		t.Fatalf("the status was answered only after the pause (%q)", msg)
	default:
	}
	msg := <-paused
	t.Log(msg)
	if !strings.Contains(msg, "the backup has not acknowledged it in 10s") && !strings.Contains(msg, "the backup was lost before it heard") {
		t.Fatalf("pause, no ack coming, says %q", msg)
	}
}

// TestHoldReachesABackupThatJoinsLater: a primary alone accepting
// backups, its guest paused before its first backup joins and still
// paused after that backup is let go and a second one joins; the primary
// hands over to the second, which goes live with the guest paused: each
// backup's full sync tells it (checkpoints carry the hold; the replay log
// says it again after each sync).
func TestHoldReachesABackupThatJoinsLater(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			o := nodetest.Options(t, mode, node.MachineSim, "kv")
			a := acceptingPrimary(t, o)
			prim := a.prim
			c := nodetest.NewKVClient(t, o.Net[len("udp:"):], mode)
			c.Incr()
			do := func(n *node.Node, op string) string {
				t.Helper()
				msg, err := n.Do(node.Request{V: node.ControlVersion, Op: op})
				if err != nil {
					t.Fatalf("%s: %v", op, err)
				}
				return msg
			}
			if msg := do(prim, "pause"); !strings.Contains(msg, "no backup in sync now") {
				t.Fatalf("pause of a primary alone says %q", msg)
			}
			a.join("the first backup")
			do(prim, "detach-backup")
			vmmtest.WaitUntil(t, "the primary to say it lost its backup", func() bool { return !prim.Status().InSync })
			second, secondLog := a.join("the second backup")
			c.Send()
			t.Log(do(prim, "failover"))
			vmmtest.Closed(t, "the primary to end", prim.Done())
			// Its role says primary once it wins the witness; its guest is
			// held before it starts, and it says live after.
			vmmtest.WaitUntil(t, "the second backup live", func() bool { return strings.Contains(secondLog.String(), "live as primary") })
			if !second.Status().Paused {
				t.Fatal("the second backup went live with the guest running")
			}
			if c.Await(300 * time.Millisecond) {
				t.Fatal("the guest answered before it was resumed")
			}
			do(second, "resume")
			c.Resend = 100 * time.Millisecond
			for range 3 {
				c.Incr()
			}
		})
	}
}

// TestControlSocketInUse: a second node cannot take a control socket a
// running node answers on, and takes over one left by a dead node.
func TestControlSocketInUse(t *testing.T) {
	o := nodetest.Options(t, node.ModeCheckpoint, node.MachineSim, "kv")
	o.Role, o.Control = node.RoleAlone, controlPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n, err := node.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); n.Wait() }()
	if st := mustAsk(t, o.Control, "status").Status; st.Role != "alone" {
		t.Errorf("status %+v", st)
	}
	o2 := o
	o2.Net = "none"
	if _, err := node.Start(ctx, o2); err == nil || !strings.Contains(err.Error(), "another node is listening") {
		t.Fatalf("a second node on the same socket: %v", err)
	}
	// A stale socket (no one listening) is replaced.
	stale := filepath.Join(filepath.Dir(o.Control), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	o3 := o2
	o3.Control = stale
	ctx3, cancel3 := context.WithCancel(ctx)
	n3, err := node.Start(ctx3, o3)
	if err != nil {
		t.Fatalf("a node on a stale socket: %v", err)
	}
	mustAsk(t, stale, "status")
	cancel3()
	n3.Wait()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the socket outlives its node: %v", err)
	}
}

// rawRequest writes line to the control socket at path and returns the
// answer.
func rawRequest(t *testing.T, path, line string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(vmmtest.Bound))
	fmt.Fprint(c, line)
	buf := make([]byte, 4096)
	n, _ := c.Read(buf)
	return string(buf[:n])
}

// TestKVMControlReplayPause pauses and resumes a replay-mode pair's C kv
// guest on KVM under the client's requests: the paused guest answers once
// resumed, one machine's, and the backup finds no divergence.
func TestKVMControlReplayPause(t *testing.T) {
	vmmtest.RequireKVM(t)
	o := nodetest.Options(t, node.ModeReplay, node.MachineKVM, "kv")
	o.Control = controlPath(t)
	p := nodetest.Start(t, o)
	pc, bc := o.Control, o.Control+".backup"
	c := nodetest.NewKVClient(t, p.Addr(), o.Mode)
	p.WaitInSync()
	for range 3 {
		c.Incr()
	}
	for range 3 {
		mustAsk(t, pc, "pause")
		c.Send()
		mustAsk(t, pc, "resume")
		c.Incr()
	}
	if d := mustAsk(t, bc, "status").Status.Replay.Divergences; d != 0 {
		t.Errorf("the backup found %d divergences", d)
	}
}

// accepting is a primary started alone that accepts backups, for the
// tests of backups joining it: acceptingPrimary starts it, join starts
// backups; the test's end stops them all.
type accepting struct {
	t      *testing.T
	o      node.Options
	ctx    context.Context
	cancel context.CancelFunc // stops them all
	prim   *node.Node
	accept string // where backups join
}

// acceptingPrimary starts o's node as a primary alone accepting backups on
// loopback; its log is shown if the test fails.
func acceptingPrimary(t *testing.T, o node.Options) *accepting {
	ctx, cancel := context.WithCancel(context.Background())
	plog := &syncBuffer{}
	po := o
	po.Role, po.AcceptBackups = node.RolePrimary, "127.0.0.1:0"
	po.Log = slog.New(slog.NewTextHandler(plog, nil))
	prim, err := node.Start(ctx, po)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		prim.Wait()
		if t.Failed() {
			t.Logf("the primary's log:\n%s", plog)
		}
	})
	return &accepting{t: t, o: o, ctx: ctx, cancel: cancel, prim: prim, accept: acceptAddr(t, plog)}
}

// join starts a backup that joins the primary and waits until the primary
// says it is in sync; it returns the backup and its log.
func (a *accepting) join(name string) (*node.Node, *syncBuffer) {
	a.t.Helper()
	bo, blog := a.o, &syncBuffer{}
	bo.Role, bo.Join, bo.Log = node.RoleBackup, a.accept, slog.New(slog.NewTextHandler(blog, nil))
	b, err := node.Start(a.ctx, bo)
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { a.cancel(); b.Wait() })
	vmmtest.WaitUntil(a.t, name+" in sync", func() bool { return a.prim.Status().InSync })
	return b, blog
}

// TestABackupJoinsAfterADetach: a primary running alone that accepts
// backups takes one and lets it go (detach-backup, which it takes at once
// whatever it is doing), ten times, then takes another, which protects
// the guest as the first did: its acks release the outputs (the client is
// answered) and the primary says it is in sync, in both modes.
func TestABackupJoinsAfterADetach(t *testing.T) {
	const joins = 10
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			o := nodetest.Options(t, mode, node.MachineSim, "kv")
			o.Checkpoint.Epoch = time.Millisecond
			a := acceptingPrimary(t, o)
			prim := a.prim
			c := nodetest.NewKVClient(t, o.Net[len("udp:"):], mode)
			for i := range uint64(joins) {
				a.join(fmt.Sprintf("backup %d", i+1))
				c.Incr()
				// Taken whatever the primary is doing (1 ms epochs: a
				// pause, acks to wait for, often).
				if _, err := prim.Do(node.Request{V: node.ControlVersion, Op: "detach-backup"}); err != nil {
					t.Fatalf("detach-backup of backup %d: %v", i+1, err)
				}
				vmmtest.WaitUntil(t, "the primary to say it lost its backup", func() bool {
					st := prim.Status()
					return st.BackupsLost == i+1 && !st.InSync
				})
				c.Incr() // alone
			}
			a.join("the last backup")
			for range 5 {
				c.Incr()
			}
		})
	}
}

// TestControlReplayFailoverDuringAPrecopy: ctl failover of a replay
// primary whose backup joined and is still getting its full checkpoint by
// pre-copy (it never ends here: a load keeps writing pages): the primary
// sends the rest in its last stop and ends, and the backup goes live
// there and answers a client, holding what the load did.
func TestControlReplayFailoverDuringAPrecopy(t *testing.T) {
	o := kvOptions(t, node.ModeReplay, node.MachineSim)
	o.Replay.PrecopyDone, o.Replay.PrecopyRounds, o.Replay.PrecopyChunk = 0, 1<<30, 4
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	plog, blog := &syncBuffer{}, &syncBuffer{}
	defer func() {
		if t.Failed() {
			t.Logf("the primary's log:\n%s\nthe backup's log:\n%s", plog, blog)
		}
	}()
	start := func(o node.Options, log *syncBuffer) *node.Node {
		o.Log = slog.New(slog.NewTextHandler(log, nil))
		n, err := node.Start(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); n.Wait() })
		return n
	}
	po := o
	po.Role, po.AcceptBackups = node.RolePrimary, "127.0.0.1:0"
	prim := start(po, plog)
	// The load: INCR of a key of its own every 100 µs, until the end.
	load, err := net.Dial("udp", o.Net[len("udp:"):])
	if err != nil {
		t.Fatal(err)
	}
	defer load.Close()
	loading, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		for loading.Err() == nil {
			load.Write([]byte("INCR load"))
			time.Sleep(100 * time.Microsecond)
		}
	}()
	var loadValue atomic.Uint64 // the value of the load's last reply
	go func() {
		buf := make([]byte, 256)
		for {
			n, err := load.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			} else if err != nil {
				continue // refused: nothing listened when a request went
			}
			var seq, v uint64
			if _, err := fmt.Sscanf(string(buf[:n]), "%d VALUE %d", &seq, &v); err == nil {
				loadValue.Store(v)
			}
		}
	}()
	bo := o
	bo.Role, bo.Join = node.RoleBackup, acceptAddr(t, plog)
	back := start(bo, blog)
	rp := func() *replay.Primary { return prim.Parts().ReplayPrimary }
	vmmtest.WaitUntil(t, "the pre-copy's third pass", func() bool {
		return rp() != nil && rp().Precopying() && rp().Stats.PrecopyPass.Load() >= 3
	})
	msg, err := prim.Do(node.Request{V: node.ControlVersion, Op: "failover"})
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	if !strings.Contains(msg, "still being pre-copied, in its last stop") {
		t.Errorf("failover says %q", msg)
	}
	vmmtest.Closed(t, "the primary to end", prim.Done())
	if err := prim.Wait(); !errors.Is(err, node.ErrHandedOver) {
		t.Fatalf("the primary ended with %v, want ErrHandedOver", err)
	}
	stopLoad()
	<-loaded
	before := loadValue.Load()
	if before == 0 {
		t.Fatal("the primary answered none of the load's requests")
	}
	vmmtest.WaitUntil(t, "the backup to go live", func() bool {
		st := back.Status()
		return st.Role == "primary" && st.Generation == 2
	})
	// The load's requests took sequence numbers too: the client's count
	// from here.
	c := nodetest.NewKVClient(t, o.Net[len("udp:"):], o.Mode)
	c.Resend = 100 * time.Millisecond
	for range 5 {
		c.Incr()
	}
	// The live backup's counter of the load goes on from the primary's
	// (a fresh guest's would start again at 1).
	vmmtest.WaitUntil(t, "the load's counter past its last value from the primary", func() bool {
		load.Write([]byte("INCR load"))
		return loadValue.Load() > before
	})
}
