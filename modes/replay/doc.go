// Package replay is ftckpt's replay mode: the VMware FT design of a
// replicated state machine for a single-vCPU guest, without performance
// counters.
//
// The primary drives its guest one stop at a time (Machine). Every input
// the guest could see differently on another run — the values of its I/O
// reads, clock readings, received frames, disk read data, and the points
// where interrupts were delivered — is appended to the replay log (LOG.md)
// and streamed to the backup. Interrupts are delivered only at stops: at a
// synchronous exit, which both sides reach deterministically, or at an
// asynchronous stop (a kick) that the log names by its Signature: RIP, a
// hash of the registers and a hash of the pages dirtied since the previous
// stop. The backup reaches it with RunTo, stopping at that RIP until the
// signature matches (DESIGN.md, "Replay without performance counters").
//
// The backup re-executes the guest from a full checkpoint (sent with the
// checkpoint package's format; to a backup attaching to a running primary,
// the paper's FT VMotion, by pre-copy while the guest runs) and the log, with
// its outputs suppressed, checking every synchronous exit, written value and
// read value against the log. A mismatch is a divergence: it asks for a
// full checkpoint and skips to it instead of running a different machine.
// The primary pre-copies it while the guest runs (as to a backup
// attaching: precopy.go), but after a gap in the log, which it copies
// stopped (see resyncWhileRunning).
//
// Output commit (DESIGN.md invariant 1): an output is held in an
// outbuf.Buffer at the LSN of the log entry last appended when the guest
// emitted it; the backup acknowledges the log it has received (never beyond
// a point it cannot reproduce: a sync whose checkpoint is not applied yet,
// a divergence, a gap); an ack releases every output at or below it.
//
// Failover: a backup whose primary is lost replays the rest of the log it
// received, wins the next generation at the witness, re-issues the outputs
// it suppressed that the primary had not reported released (so a few may
// be repeated at the boundary, as the paper allows; the disk writes the
// primary held at a full checkpoint come with it; only frames the primary
// held while the backup was out of sync can be lost, as on a network), and
// becomes a Primary with no backup. A primary that loses its backup must
// win the next generation to go on alone, or halt. A backup whose replayer
// is stuck on its disk image (a write that does not return) drops the link,
// so that its primary stops counting on it (watchReplayer).
package replay
