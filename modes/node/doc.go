// Package node is the assembly point of ftckpt: from one Options it builds
// a node — a machine (KVM, or the software machine of vmm/sim), the guest's
// devices and their host backends, the output buffer between them, the
// witness — and runs it in its role under one replication mode until the
// guest stops, the context ends, or the role's rule says halt.
//
// The CLI turns flags into Options and calls Run (or RunLocal, for a
// primary here and a backup as a child process); ftckpt bench and the tests
// build their nodes the same way, so there is one way to build a machine.
//
// A node's life, by mode and role:
//
//   - checkpoint primary: win the next generation, build the machine with
//     its outputs held (modes/checkpoint.HeldNet, HeldDisk), connect to the
//     backup, start the guest, replicate an epoch at a time; if the backup
//     is lost and the next generation won, run on alone.
//   - checkpoint backup: build the machine (not started) with its backends
//     deferred, follow one primary after another (format.Backup stages and
//     commits their checkpoints); when one is lost holding a committed
//     epoch, contest the next generation and, won, go live.
//   - replay primary: record the guest's execution and ship the log (or run
//     alone and let backups join, FT VMotion); replay backup: replay the
//     log, and go live when the primary is lost (modes/replay).
package node
