// Package checkpoint is ftckpt's checkpoint mode: epoch-based state
// replication for multi-vCPU guests (the Remus design).
//
// The primary runs the guest. Every epoch it pauses it, harvests the pages
// dirtied since the last pause (dirtylog), copies them aside with the
// machine's state, resumes the guest, and — while the guest runs on —
// encodes the copies as a checkpoint (XOR against the backup's copy, lz4)
// and streams it to the backup. The backup stages each checkpoint whole,
// applies it atomically and acknowledges it. The guest's outputs of epoch e
// are held in an outbuf.Buffer until the ack of e (invariant 1).
//
// Failure handling follows the paper's rule through a witness.Fence: a
// primary whose backup stops answering suspends its fence and must win the
// next generation to go on alone, or halt; a backup whose primary stops
// answering asks for the next generation and goes live only if it wins,
// restoring the last committed epoch.
//
// Disk writes get more than holding (HeldDisk): each is also kept until it
// is durable and carried in the checkpoints, so that a backup going live
// writes again, before its guest runs, the writes of committed epochs that
// the dead primary may never have released; and a guest's FLUSH completes
// only once every earlier write is released and flushed. Network frames are
// never sent again: a released one must not repeat, and an unreleased one
// lost with the primary is, to the client, a packet lost on the network.
//
// A primary that runs alone (from the start, or after it lost its backup
// and won the next generation) takes a backup into the running guest
// (Protect; the backup dials it and Follow tries again until one takes
// it): the full sync's pre-copy rounds read memory while the guest runs,
// each harvested once the one before is written to the link, and only the
// pages left go in the pause that captures the commit. Until that pause the
// guest's outputs leave at once and a backup lost costs nothing, no
// generation asked for; from it on, outputs wait for the new backup's acks
// and the paper's rule applies. The protocol is the full sync's, unchanged.
//
// The wire protocol is checkpoint/PROTOCOL.md. Goroutines of a primary:
// the epoch loop (pauses, harvests, copies, hands epochs on), the sender
// (encodes and writes checkpoints and heartbeats), and the receiver (reads
// acks, heartbeats and resync requests), and while released disk writes
// are not yet flushed, HeldDisk's flusher. A backup runs one receiver and a
// heartbeat sender.
package checkpoint
