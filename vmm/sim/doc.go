// Package sim is a deterministic software computer with one vCPU that
// implements machine.Stepper: the stand-in for KVM in the replay engine's
// tests and in benchmarks on hosts without /dev/kvm. It is a small real
// machine, not a script: programs in its own instruction set live in guest
// RAM, take interrupts at whatever instruction a Kick catches them, and
// reach the world only through port and MMIO accesses that Complete
// performs against its devices, which call the Env.
//
// Files: isa.go (the instruction set and Disassemble), cpu.go (the
// interpreter), asm.go and expr.go (the assembler), machine.go (the
// machine.Stepper methods), devices.go (ports, interrupt controller, timer,
// clock, disk, network), signature.go (dirty tracking, Mark, Signature),
// state.go (SaveState, RestoreState), guests.go and guests/*.asm (the tick
// and kv guests), client.go (their frame formats), ckguest.go (a machine
// run freely on its own goroutine as a modes/checkpoint.Guest: the
// unprotected baseline and checkpoint mode's guest in `ftckpt bench`).
//
// Guest-physical layout: RAM from 0 (at most MaxPages pages); the
// interrupt vector table at IVTBase (vector v's handler address is the
// word at 8*v; line n of the interrupt controller is vector n); the network
// device's registers at MMIOBase. Every access at or above the end of RAM
// is an MMIO exit; the devices answer only their own addresses, other
// reads return all ones. The built-in guests put their parameters at
// ParamsBase and code at EntryBase; the stack starts at the end of RAM.
//
// Stops: Run executes on the caller's goroutine until a synchronous exit
// (an access, hlt, an interrupt window) or a Kick, which any goroutine may
// call and which is checked before every instruction. The RIP of an access
// exit is the accessing instruction, which Complete finishes; of ExitHalt
// the instruction after hlt; of the others, the next instruction to
// execute. A kick pending when Run starts stops it before any instruction,
// so two stops can be at the same point: a replayer landing on a
// Signature should compare the current Signature before calling RunTo,
// which after an ExitBreakpoint first executes the instruction it stopped
// at.
//
// Interrupts are delivered only by InjectPending, never while the guest
// runs: flags then pc are pushed, IF cleared, pc set from the vector
// table; iret pops them. An sti that sets IF delays interrupts (and an
// ExitWindow) by one instruction, so "sti; hlt" sleeps safely.
//
// Determinism: the machine's only inputs are its state, its RAM, the
// engine's calls and the Env's answers. Instructions() counts executed
// instructions for benchmarks and is not part of the state.
package sim
