// Package witness decides which host may go live: exactly one candidate
// ever wins each generation, and the winner's generation fences every
// output release path, so two primaries never run (DESIGN.md, invariant 3).
//
// # Arbiters
//
// An Arbiter does a compare-and-set on (generation, owner): Acquire(g,
// owner) wins iff the generation held is g-1, or owner already holds g (so
// retries are safe). A loser gets a *LostError naming the holder. Three
// implementations share that rule (decide in arbiter.go):
//
//   - RaftClient talks to a raft witness cluster (Node, RunNode, `ftckpt
//     witness`): a hashicorp/raft group whose FSM holds the claim. Every
//     request, reads included, goes through the raft log, so a leader cut off
//     from its quorum can neither grant nor report a generation. Three nodes
//     tolerate one down. The client protocol (protocol.go) is HTTP+JSON with
//     a version field; followers redirect to the leader, and the client goes
//     round the nodes with backoff until one decides or its context ends,
//     then reports the quorum unreachable and what each node said.
//   - DiskLease is a 512-byte lease block (magic, version, generation, owner,
//     CRC-32C) in a lease file or inside a shared disk image, updated under
//     an OFD record lock with an fsync before unlock. It works on local
//     filesystems and on NFS with locking. A block that fails verification is
//     reported (ErrCorrupt) and never overwritten.
//   - Memory is an in-process arbiter with fault injection, for tests.
//
// Open turns a spec into an Arbiter: raft://HOST:PORT,..., disk:PATH,
// disk:IMAGE#OFFSET, or "" for DefaultSpec.
//
// # Who may talk to the raft witness
//
// With ServeConfig.TLS (ftckpt witness --tls-cert, --tls-key, --tls-ca) every
// connection of a node is mutual TLS 1.3 with certificates of the cluster's
// CA (package checkpoint/mtls): raft's connections between the nodes go
// through a TLS stream layer (tlsStream, ALPN RaftALPN), and the client
// protocol is HTTPS (ALPN ClientALPN). A stranger — a certificate of
// another CA, a self-signed one, none, records replayed or cut short — is
// refused at the handshake, logged with the reason, and never reaches raft
// or the lease. A client opened with OpenWith and OpenOptions.TLS speaks
// the same; one refused by every node stops at once (mtls.ErrRefused)
// instead of waiting for a quorum. The disk lease has no network and no
// use for TLS.
//
// # Bootstrap of the raft witness
//
// Every node is started with the same peer list ID=HOST:PORT,... (HOST:PORT
// is the client address; raft uses PORT+1). A node with no state bootstraps
// that configuration; identical bootstraps are safe. Membership is fixed at
// bootstrap.
//
// # Fencing and the halting rule
//
// A mode holds a Fence (it satisfies outbuf's Fence interface): Check(g) is
// nil iff outputs of generation g may be released. It is valid after a win,
// Suspend stops all releases when the peer is lost, Confirm re-validates it
// once the peer is back, and a later generation revokes it for good.
//
// The paper's rule is in rule.go. A primary that loses its backup calls
// PrimaryLostBackup: it must win the next generation (which the backup then
// cannot) to go on alone; if the arbiter cannot be reached or someone else
// won, the error wraps ErrHalt and the primary stops releasing and halts. A
// backup that loses its primary calls BackupLostPrimary: it asks for the
// next generation and, while the arbiter is unreachable, waits and retries
// until its context ends; it never goes live without winning.
package witness
