// Package outbuf holds a guest's outputs until the backup has acknowledged the
// state that produced them, then releases them in the order the guest emitted
// them. It is the output-commit half of ftckpt (DESIGN.md invariants 1 and 3)
// and knows nothing of KVM: devices hand it network frames and disk writes,
// the mode hands it acknowledgements.
//
// # Positions
//
// Every output is held at a position, a uint64 that only grows: the epoch
// number in checkpoint mode, the log sequence number of the emitting exit in
// replay mode. [Buffer.Hold] queues an output at a position; [Buffer.Commit]
// (the backup's ack) releases, in emission order, every held output whose
// position is at most the committed one; [Buffer.Drop] discards everything
// not yet released. Position 0 is an ordinary position: "nothing committed
// yet" is a separate state, not position 0.
//
// # Fencing
//
// A Buffer releases under one generation, the one its owner won at the
// witness. Before each release pass it asks its [Fence] whether that
// generation is still current; if the fence refuses, nothing more is
// released, the outputs stay held, and the buffer fails permanently with an
// error wrapping both [ErrFenced] and the fence's own error. A failed buffer
// releases nothing and accepts nothing; the mode is expected to halt.
//
// # Read-your-writes
//
// A held disk write has not reached the disk, yet the guest must see it when
// it reads back. The guest's disk reads therefore go through
// [Buffer.ReadAt], which reads the disk and lays the held writes over the
// result, oldest first, under a lock that keeps a release from moving a write
// from the overlay to the disk half-way through the read.
//
// # Back-pressure
//
// Held outputs are bounded by [Config.MaxBytes] and [Config.MaxOutputs]. When
// an output does not fit, Hold blocks (first come, first served) until
// releases free room or its context ends; nothing is dropped silently. An
// output larger than MaxBytes can never fit and is refused at once. Held
// bytes are copies taken from size-class pools and recycled on release, so
// sinks must not keep the slices they are given (io.WriterAt's rule).
//
// # Locking
//
// Three locks, always taken in this order: relMu, then diskMu, then mu.
//
//   - relMu serialises release passes (Commit, Hold of an already committed
//     position) and Drop, so sinks see outputs in emission order. It is held
//     while sinks run.
//   - diskMu is a read-write lock between the disk sink and ReadAt: a release
//     holds it for writing around one disk write and that write's removal from
//     the overlay; ReadAt holds it for reading around the disk read and the
//     overlay. Network releases do not take it.
//   - mu protects the queue, the overlay index, the counters and the waiters.
//     It is never held while a sink, the fence or a caller's disk runs, so a
//     slow sink does not stall Hold on vCPU threads (beyond back-pressure).
package outbuf
