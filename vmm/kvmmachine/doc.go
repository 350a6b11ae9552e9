// Package kvmmachine holds KVM's machines as the modes drive them
// (package machine's contract): Runner, a vmm.Machine run freely and
// paused at epochs (checkpoint mode), and Stepper, a single-vCPU
// vmm.Stepper driven stop by stop with every source of non-determinism
// behind a machine.Env (replay mode). Both are given their dirty-page
// Tracker (package dirtylog's); machinetest's contract runs on both.
package kvmmachine
