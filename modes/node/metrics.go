package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	format "github.com/ftckpt/ftckpt/checkpoint"
	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/replay"
	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/witness"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Prometheus metrics (--metrics ADDR): GET /metrics on ADDR. Names and
// units follow Prometheus conventions (seconds, bytes, _total counters).
// Most figures are read from the node's parts at each scrape (Collect);
// what must see every event — each checkpoint's pause, each round trip to
// the witness — goes into histograms as it happens.

// pauseParts are the parts of a checkpoint's pause, as its label.
var pauseParts = []string{"stop", "harvest", "copy", "state", "resume"}

// metrics is a node's registry and the histograms fed as events happen.
// Its histograms are safe for concurrent use.
type metrics struct {
	n        *Node
	reg      *prometheus.Registry
	pause    prometheus.Histogram
	parts    *prometheus.HistogramVec
	dirty    prometheus.Histogram
	witness  *prometheus.HistogramVec
	observed *ckmode.Primary // the primary whose pauses feed pause; only partsChanged touches it
}

func newMetrics(n *Node) *metrics {
	m := &metrics{n: n, reg: prometheus.NewPedanticRegistry()}
	m.pause = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ftckpt_checkpoint_pause_seconds",
		Help:    "How long a checkpoint paused the guest, from stopping it to its running again.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 2, 24),
	})
	m.parts = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ftckpt_checkpoint_pause_part_seconds",
		Help:    "Each part of a checkpoint's pause: stop (every vCPU and device), harvest (the dirty log), copy (the dirty pages), state (machine state capture), resume.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 2, 24),
	}, []string{"part"})
	m.dirty = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ftckpt_checkpoint_dirty_pages",
		Help:    "Pages a checkpoint captured (dirtied during its epoch).",
		Buckets: prometheus.ExponentialBuckets(1, 4, 12),
	})
	m.witness = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ftckpt_witness_round_trip_seconds",
		Help:    "Round trips to the witness (arbiter), by operation: acquire (contest a generation) or current (ask who holds it).",
		Buckets: prometheus.ExponentialBuckets(1e-4, 2, 18),
	}, []string{"op"})
	for _, part := range pauseParts {
		m.parts.WithLabelValues(part) // every part shows from the start
	}
	m.reg.MustRegister(m.pause, m.parts, m.dirty, m.witness, nodeCollector{n},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observePause records one checkpoint's pause. It runs on the epoch loop.
func (m *metrics) observePause(p ckmode.Pause) {
	m.pause.Observe(p.Total().Seconds())
	for i, d := range []time.Duration{p.Stop, p.Harvest, p.Copy, p.State, p.Resume} {
		m.parts.WithLabelValues(pauseParts[i]).Observe(d.Seconds())
	}
	m.dirty.Observe(float64(p.Dirty))
}

// partsChanged has the pauses of a checkpoint primary just built observed.
// Precondition: the node's mu is held (Node.set).
func (m *metrics) partsChanged(p *Parts) {
	if p.CheckpointPrimary != nil && p.CheckpointPrimary != m.observed {
		m.observed = p.CheckpointPrimary
		p.CheckpointPrimary.Stats.SetObserver(m.observePause)
	}
}

// timedArbiter is an Arbiter whose round trips are observed.
type timedArbiter struct {
	witness.Arbiter
	m *metrics
}

func (a timedArbiter) Acquire(ctx context.Context, g uint64, owner string) (witness.Claim, error) {
	defer a.observe("acquire", time.Now())
	return a.Arbiter.Acquire(ctx, g, owner)
}

func (a timedArbiter) Current(ctx context.Context) (witness.Claim, error) {
	defer a.observe("current", time.Now())
	return a.Arbiter.Current(ctx)
}

func (a timedArbiter) observe(op string, start time.Time) {
	a.m.witness.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// serveMetrics serves m's registry on ln until it is closed.
func serveMetrics(ln net.Listener, m *metrics, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "ftckpt: metrics at /metrics")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	return srv
}

// nodeCollector reads the node's figures at each scrape.
type nodeCollector struct{ n *Node }

// desc is a metric family read at scrape time.
type desc struct {
	*prometheus.Desc
	kind prometheus.ValueType
}

func newDesc(name, help string, kind prometheus.ValueType, labels ...string) desc {
	return desc{prometheus.NewDesc(name, help, labels, nil), kind}
}

var (
	dInfo       = newDesc("ftckpt_node_info", "The node as started: its replication mode, role, machine and guest.", prometheus.GaugeValue, "mode", "role", "machine", "guest")
	dRole       = newDesc("ftckpt_role", "1 for the role the node plays now (a backup gone live is a primary), 0 for the others.", prometheus.GaugeValue, "role")
	dGeneration = newDesc("ftckpt_generation", "The generation this node holds at the witness (0: none; a backup holds one once live).", prometheus.GaugeValue)
	dInSync     = newDesc("ftckpt_in_sync", "1 if the pair is in sync: the backup holds a committed copy of the guest (on a primary: and it still has its backup).", prometheus.GaugeValue)
	dFailovers  = newDesc("ftckpt_failovers_total", "Times this node went live as primary from backup.", prometheus.CounterValue)
	dLost       = newDesc("ftckpt_backups_lost_total", "Times this primary lost (or detached) its backup and went on alone.", prometheus.CounterValue)
	dPaused     = newDesc("ftckpt_guest_paused", "1 while the operator holds the guest paused (ftckpt ctl pause); on a backup, while the state it holds has it so (it keeps it paused should it take over).", prometheus.GaugeValue)
	// dKept is a primary's, in either mode.
	dKept = newDesc("ftckpt_sync_disk_blocks_kept", "Disk blocks that the last full sync to a backup found on its mirrored image already and sent without their data (0 without a mirrored disk).", prometheus.GaugeValue)
	// dKeptPages is a primary's, in either mode.
	dKeptPages = newDesc("ftckpt_sync_memory_pages_kept", "Guest memory pages that the last full sync to a backup found in its memory already (a backup that joins again, or a node that handed its guest over and rejoins) and sent without their data.", prometheus.GaugeValue)

	dDelay         = newDesc("ftckpt_output_delay_seconds", "Output commit delay: from an output's hold to its release. Power-of-two buckets; the sum is estimated from bucket midpoints.", prometheus.UntypedValue)
	dHeld          = newDesc("ftckpt_outputs_held", "Outputs held until the backup acknowledges the state that produced them.", prometheus.GaugeValue)
	dHeldBytes     = newDesc("ftckpt_outputs_held_bytes", "Bytes of the outputs held.", prometheus.GaugeValue)
	dWaiting       = newDesc("ftckpt_outputs_waiting", "Outputs blocked for room in the output buffer (back-pressure).", prometheus.GaugeValue)
	dReleased      = newDesc("ftckpt_outputs_released_total", "Outputs released to the network or disk.", prometheus.CounterValue)
	dReleasedBytes = newDesc("ftckpt_outputs_released_bytes_total", "Bytes of the outputs released.", prometheus.CounterValue)
	dDropped       = newDesc("ftckpt_outputs_dropped_total", "Outputs dropped (never released).", prometheus.CounterValue)

	dEpochs     = newDesc("ftckpt_checkpoint_epochs_total", "Checkpoints taken (epochs and full syncs).", prometheus.CounterValue)
	dAcked      = newDesc("ftckpt_checkpoint_acked_epoch", "The highest epoch the backup acknowledged.", prometheus.GaugeValue)
	dLagEpochs  = newDesc("ftckpt_checkpoint_backup_lag_epochs", "Epochs captured and not yet acknowledged by the backup (absent while the guest has no backup in sync).", prometheus.GaugeValue)
	dEpochLen   = newDesc("ftckpt_checkpoint_epoch_seconds", "The interval between checkpoints now.", prometheus.GaugeValue)
	dPageBytes  = newDesc("ftckpt_checkpoint_page_bytes_total", "Bytes of the dirty pages shipped, before delta encoding and compression.", prometheus.CounterValue)
	dWireBytes  = newDesc("ftckpt_checkpoint_wire_bytes_total", "Checkpoint bytes written to the backup, after delta encoding and compression.", prometheus.CounterValue)
	dResyncs    = newDesc("ftckpt_checkpoint_resyncs_total", "Full syncs the backup asked for.", prometheus.CounterValue)
	dCommitted  = newDesc("ftckpt_checkpoint_committed_epoch", "The epoch the backup holds committed.", prometheus.GaugeValue)
	dCommitGen  = newDesc("ftckpt_checkpoint_committed_generation", "The generation of the primary whose state the backup holds.", prometheus.GaugeValue)
	dBackupSync = newDesc("ftckpt_checkpoint_backup_syncing", "1 while the backup receives a full sync.", prometheus.GaugeValue)

	dExits      = newDesc("ftckpt_replay_exits_total", "Synchronous exits recorded.", prometheus.CounterValue)
	dLandings   = newDesc("ftckpt_replay_landings_total", "Asynchronous stops recorded by signature (landings).", prometheus.CounterValue)
	dEntries    = newDesc("ftckpt_replay_log_entries_total", "Log entries appended (the LSN).", prometheus.CounterValue)
	dLogBytes   = newDesc("ftckpt_replay_log_bytes_total", "Encoded log bytes shipped.", prometheus.CounterValue)
	dBatches    = newDesc("ftckpt_replay_log_batches_total", "Log batches shipped.", prometheus.CounterValue)
	dAckedLSN   = newDesc("ftckpt_replay_acked_lsn", "The highest LSN the backup acknowledged.", prometheus.GaugeValue)
	dLagEntries = newDesc("ftckpt_replay_backup_lag_entries", "On a primary, log entries not yet acknowledged; on a backup, entries received and not yet replayed.", prometheus.GaugeValue)
	dSyncs      = newDesc("ftckpt_replay_syncs_total", "Full checkpoints sent.", prometheus.CounterValue)
	dRResyncs   = newDesc("ftckpt_replay_resyncs_total", "Full checkpoints the backup asked for.", prometheus.CounterValue)
	dPrecopied  = newDesc("ftckpt_replay_precopied_pages_total", "Pages sent by pre-copy rounds.", prometheus.CounterValue)
	dRxDropped  = newDesc("ftckpt_replay_rx_dropped_total", "Received frames dropped: the queue was full.", prometheus.CounterValue)
	dReceived   = newDesc("ftckpt_replay_received_lsn", "The highest LSN the backup received.", prometheus.GaugeValue)
	dReplayed   = newDesc("ftckpt_replay_replayed_entries_total", "Log entries the backup replayed.", prometheus.CounterValue)
	dDiverge    = newDesc("ftckpt_replay_divergences_total", "Divergences the backup detected (each answered by a full checkpoint).", prometheus.CounterValue)
	dBreakpoint = newDesc("ftckpt_replay_breakpoint_visits_total", "Stops at a landing's RIP on the backup, matching its signature or not.", prometheus.CounterValue)
	dApplied    = newDesc("ftckpt_replay_checkpoints_applied_total", "Full checkpoints the backup applied.", prometheus.CounterValue)
	dRounds     = newDesc("ftckpt_replay_precopy_rounds_total", "Pre-copy round messages the backup applied.", prometheus.CounterValue)
)

var allDescs = []desc{dInfo, dRole, dGeneration, dInSync, dFailovers, dLost, dPaused, dKept, dKeptPages,
	dDelay, dHeld, dHeldBytes, dWaiting, dReleased, dReleasedBytes, dDropped,
	dEpochs, dAcked, dLagEpochs, dEpochLen, dPageBytes, dWireBytes, dResyncs, dCommitted, dCommitGen, dBackupSync,
	dExits, dLandings, dEntries, dLogBytes, dBatches, dAckedLSN, dLagEntries, dSyncs, dRResyncs, dPrecopied, dRxDropped,
	dReceived, dReplayed, dDiverge, dBreakpoint, dApplied, dRounds}

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d.Desc
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	emit := func(d desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.Desc, d.kind, v, labels...)
	}
	b := func(ok bool) float64 {
		if ok {
			return 1
		}
		return 0
	}
	st := n.Status()
	emit(dInfo, 1, n.o.Mode.String(), n.o.Role.String(), machineLabel(n.o.Machine), n.o.Guest)
	for _, r := range []Role{RolePrimary, RoleBackup, RoleAlone} {
		emit(dRole, b(st.Role == r.String()), r.String())
	}
	emit(dGeneration, float64(st.Generation))
	emit(dInSync, b(st.InSync))
	emit(dFailovers, float64(st.Failovers))
	emit(dLost, float64(st.BackupsLost))
	emit(dPaused, b(st.Paused))

	parts := n.Parts()
	if parts.Outputs != nil {
		collectOutputs(parts.Outputs.Stats(), emit, ch)
	}
	if p := parts.CheckpointPrimary; p != nil {
		epochs, acked, shipped, raw, _ := p.Stats.Counters()
		emit(dEpochs, float64(epochs))
		emit(dAcked, float64(acked))
		if p.Protected() {
			emit(dLagEpochs, float64(p.Position()-1-min(acked, p.Position()-1)))
		}
		emit(dEpochLen, time.Duration(st.Epoch).Seconds())
		emit(dPageBytes, float64(raw))
		emit(dWireBytes, float64(shipped))
		emit(dResyncs, float64(p.Stats.ResyncCount()))
		sync, _ := p.Syncing()
		emit(dKept, float64(sync.KeptBlocks))
		emit(dKeptPages, float64(sync.KeptPages))
	}
	if bk := parts.CheckpointBackup; bk != nil {
		s := bk.Status()
		emit(dCommitted, float64(s.Epoch))
		emit(dCommitGen, float64(s.Generation))
		emit(dBackupSync, b(s.State == format.StateSyncing))
	}
	if p := parts.ReplayPrimary; p != nil {
		s := p.Stats
		emit(dExits, float64(s.Exits.Load()))
		emit(dLandings, float64(s.Landings.Load()))
		emit(dEntries, float64(s.Entries.Load()))
		emit(dLogBytes, float64(s.LogBytes.Load()))
		emit(dBatches, float64(s.Batches.Load()))
		emit(dAckedLSN, float64(s.Acked.Load()))
		emit(dSyncs, float64(s.Syncs.Load()))
		emit(dRResyncs, float64(s.Resyncs.Load()))
		emit(dPrecopied, float64(s.Precopied.Load()))
		emit(dRxDropped, float64(s.RxDropped.Load()))
		emit(dKept, float64(s.KeptBlocks.Load()))
		emit(dKeptPages, float64(s.KeptPages.Load()))
		if p.Protected() {
			emit(dLagEntries, float64(s.Entries.Load()-min(s.Acked.Load(), s.Entries.Load())))
		}
	}
	if bk := parts.ReplayBackup; bk != nil && parts.ReplayPrimary == nil {
		collectReplayBackup(bk.Stats, emit)
	}
}

// collectReplayBackup emits a replay backup's figures.
func collectReplayBackup(s *replay.Stats, emit func(desc, float64, ...string)) {
	emit(dReceived, float64(s.Received.Load()))
	emit(dReplayed, float64(s.Replayed.Load()))
	emit(dLagEntries, float64(s.Received.Load()-min(s.Replayed.Load(), s.Received.Load())))
	emit(dDiverge, float64(s.Divergences.Load()))
	emit(dBreakpoint, float64(s.BreakpointHits.Load()))
	emit(dApplied, float64(s.Applied.Load()))
	emit(dRounds, float64(s.Rounds.Load()))
}

// collectOutputs emits an output buffer's figures.
func collectOutputs(s outbuf.Stats, emit func(desc, float64, ...string), ch chan<- prometheus.Metric) {
	emit(dHeld, float64(s.HeldOutputs))
	emit(dHeldBytes, float64(s.HeldBytes))
	emit(dWaiting, float64(s.Waiting))
	emit(dReleased, float64(s.Released))
	emit(dReleasedBytes, float64(s.ReleasedBytes))
	emit(dDropped, float64(s.Dropped))
	ch <- delayHistogram(s.Delay)
}

// delayHistogram is outbuf's power-of-two histogram as a Prometheus one:
// buckets from 1 µs (2^10 ns) to 68 s (2^36 ns), earlier buckets folded
// into the first; the sum is estimated at 3/4 of each bucket's top (the
// buffer keeps no sum).
func delayHistogram(h outbuf.Histogram) prometheus.Metric {
	const first, last = 10, 36
	buckets := map[float64]uint64{}
	var cum uint64
	sum := 0.0
	for i, c := range h.Buckets {
		cum += c
		top := float64(uint64(1)<<i) / 1e9
		if i > 0 {
			sum += float64(c) * top * 0.75
		}
		if i >= first && i <= last {
			buckets[top] = cum
		}
	}
	return prometheus.MustNewConstHistogram(dDelay.Desc, h.Count, sum, buckets)
}

// machineLabel is a Machine as a label value.
func machineLabel(m Machine) string {
	if m == MachineSim {
		return "sim"
	}
	return "kvm"
}
