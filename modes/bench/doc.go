// Package bench compares ftckpt's modes on one guest and load: the same
// workload unprotected, under replay mode, under checkpoint mode at each
// epoch, then unprotected again, one configuration after the other, each a
// pair of real nodes (package node) in this process on loopback TCP, with a
// disk-lease witness in a temporary directory. It measures the guest's
// progress against the unprotected floor, the bytes shipped, the kv load's
// replies and round trips, the output delay, replay's landings and
// checkpoint mode's pauses in their parts beside the memcpy floor of the
// same pages, measured in the same run.
//
// Progress is what the machine can count: instructions on the software
// machine (vmm/sim); on KVM, which has no instruction counter here (no
// PMU), the workload's own: kv replies, memtouch's pages dirtied (from its
// console). Numbers, never pass/fail.
package bench
