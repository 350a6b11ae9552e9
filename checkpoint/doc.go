// Package checkpoint is ftckpt's state-transfer format: the versioned
// checkpoint stream, the per-page delta codec (zero / raw / lz4 / XOR+lz4),
// the primary's page cache, the backup's staging with atomic apply, and the
// length-prefixed framing used on a stream transport.
//
// The package knows nothing of KVM. Guest memory is a []byte covering
// guest-physical [0, size), size a multiple of PageSize; the machine state
// (vCPUs and devices) is an opaque, already-versioned blob produced and
// consumed by the vmm package.
//
// # Checkpoint kinds
//
// A checkpoint names the state the backup holds once it commits:
//
//   - KindEpoch: an incremental epoch. Generation equals the backup's
//     committed generation and Epoch is exactly committed+1. Pages may be
//     XOR deltas against the backup's committed copy. It carries the machine
//     state and is applied all-or-nothing (DESIGN.md invariant 2).
//   - KindSyncRound: one pre-copy round of a full synchronisation (initial
//     sync or resync). It is verified whole before any byte of memory is
//     written, but the memory it produces is NOT a committed state: the
//     guest kept running while the round was read, so the pages are a
//     mixture of moments. The first round (FlagSyncStart) makes the backup
//     drop its committed state: from then until the sync commits it cannot
//     take over. A round carries no machine state and is not acknowledged.
//   - KindSyncCommit: the last message of a full synchronisation, sent while
//     the guest is paused. It carries the remaining pages and the machine
//     state; the backup checks that the rounds and this message together
//     covered every page of guest memory, applies it and commits its
//     (Generation, Epoch). With FlagSyncStart it is a one-message full sync,
//     staged whole, that keeps the previous committed state intact until it
//     applies: use it to resynchronise a backup whose committed state is
//     still worth keeping, when staging all of memory once is affordable.
//
// # Disk writes
//
// A committing checkpoint may carry a DiskLog: the guest's disk writes that
// the backup keeps until the primary says they are durable, and writes
// again at go-live (see DiskLog and Backup.DiskWrites). Network frames are
// never carried: checkpoint mode must not repeat a released frame, and an
// unreleased one lost with the primary is a network loss.
//
// # The primary's page cache and when it is right
//
// XOR deltas are only correct against the exact bytes the backup holds.
// The Encoder updates its PageCache when it encodes a page, so the cache
// describes the backup "as if every checkpoint encoded so far commits"
// (PageCache.Base names that state). The rule is therefore:
//
//	If any encoded checkpoint is not committed by the backup (rejected,
//	lost with a dropped connection, or abandoned half-encoded), the cache
//	is wrong and the next checkpoint must be a full sync (FlagSyncStart),
//	which invalidates the cache before encoding.
//
// On reconnect the backup reports its committed (generation, epoch); if it
// equals PageCache.Base the stream continues with deltas, otherwise the
// primary resynchronises. This is simpler than per-epoch undo logs and is
// correct because the transport is reliable and ordered: a loss is always
// visible as a reconnect or a rejection.
//
// # Goroutines
//
// An Encoder (with its PageCache) is used by one goroutine at a time, which
// may run concurrently with the guest: it reads only the page copies the
// caller made while the guest was paused. A Backup is used by one goroutine
// at a time (the receiver); guest memory it owns is stable only between
// calls to Receive. Reader and Writer are each used by one goroutine.
package checkpoint
