package machine

import (
	"errors"
	"fmt"
)

// ExitKind says why a Stepper stopped running its guest. The zero value is
// invalid.
type ExitKind uint8

// Exit kinds. The synchronous ones (PIO, MMIO, halt, window) happen at the
// same point of every execution of the same guest from the same state with
// the same inputs: they are the deterministic points replay is built on
// (a window less surely than the others: see ExitWindow).
const (
	ExitPIORead   ExitKind = 1 // IN: Complete fills Data
	ExitPIOWrite  ExitKind = 2 // OUT of Data
	ExitMMIORead  ExitKind = 3 // load from an unbacked guest-physical address: Complete fills Data
	ExitMMIOWrite ExitKind = 4 // store of Data to an unbacked guest-physical address
	ExitHalt      ExitKind = 5 // HLT: the guest waits for an interrupt
	// ExitWindow: the interrupt window InjectPending asked for opened. Not
	// always at the first boundary where it could: a KVM may notice a
	// window that the guest opened without an exit (IRET setting IF) only
	// at its next exit of any kind, a kick's, a breakpoint's or a host
	// interrupt's (kvm-pvm does), so where it comes may differ between two
	// executions. Where no window is asked for, none of that matters.
	ExitWindow     ExitKind = 6
	ExitKicked     ExitKind = 7 // Kick stopped the guest: an asynchronous point
	ExitBreakpoint ExitKind = 8 // RunTo reached its address

	numExitKinds = 9
)

var exitKindNames = [numExitKinds]string{"invalid", "pio-read", "pio-write", "mmio-read", "mmio-write", "halt", "window", "kicked", "breakpoint"}

func (k ExitKind) String() string {
	if k < numExitKinds {
		return exitKindNames[k]
	}
	return fmt.Sprintf("exit(%d)", uint8(k))
}

// Synchronous reports whether the exit is a deterministic point of the
// guest's execution (see the constants).
func (k ExitKind) Synchronous() bool { return k >= ExitPIORead && k <= ExitWindow }

// IsRead reports whether Complete produces data the guest reads.
func (k ExitKind) IsRead() bool { return k == ExitPIORead || k == ExitMMIORead }

// IsIO reports whether the exit is an access Complete must perform.
func (k ExitKind) IsIO() bool { return k >= ExitPIORead && k <= ExitMMIOWrite }

// Exit is one stop of the guest.
type Exit struct {
	Kind ExitKind
	// Addr is the port (PIO) or guest-physical address (MMIO).
	Addr uint64
	// Size is the access size in bytes, 1 to 8, for PIO and MMIO.
	Size uint8
	// RIP is the guest's instruction pointer at the exit. For an access it
	// is the same on every execution (it names the instruction); its exact
	// meaning (at or after the instruction) is the Stepper's, consistently.
	RIP uint64
	// Data is the value written (writes) or, after Complete, read (reads),
	// little-endian in Data[:Size].
	Data [8]byte
}

func (e Exit) String() string {
	if e.Kind.IsIO() {
		return fmt.Sprintf("%v addr=%#x size=%d rip=%#x", e.Kind, e.Addr, e.Size, e.RIP)
	}
	return fmt.Sprintf("%v rip=%#x", e.Kind, e.RIP)
}

// Signature names an asynchronous point in the guest's execution without an
// instruction counter: two points after the same synchronous exit with equal
// signatures have the same architectural state, so delivering an interrupt
// at either is the same execution (DESIGN.md, "Replay without performance
// counters").
type Signature struct {
	RIP uint64
	// Regs hashes the general-purpose registers and RFLAGS.
	Regs uint64
	// Dirty hashes the pages whose contents changed since the last Mark,
	// their numbers and contents in page order. A machine leaves out pages
	// that only it writes (KVM's page-table walker marks the guest's page
	// tables dirty on some hosts), the same on every execution.
	Dirty uint64
}

// ErrPowerOff is returned (wrapped) by Complete when the guest turned its
// machine off: nothing more will run.
var ErrPowerOff = errors.New("guest powered off")

// Stepper is a single-vCPU machine driven one stop at a time by an engine
// (replay mode: the primary records its stops, the backup replays them).
// The engine calls every method from one goroutine, except Kick. Between
// calls the guest does not run, so state may be read and written.
//
// A Stepper has no source of non-determinism of its own: it reads time,
// disk data and received frames only through its Env, and emits outputs
// only through it. Given the same start state, the same Env answers and the
// same engine calls, it executes the same way.
type Stepper interface {
	Machine
	// Run enters the guest and returns at its next stop: a synchronous exit
	// or ExitKicked. Host-side interruptions other than Kick (signals) are
	// absorbed and never returned.
	Run() (Exit, error)
	// RunTo is Run that also returns ExitBreakpoint whenever the guest is
	// about to execute the instruction at rip (including at once, if it is
	// there now). Calling RunTo again after ExitBreakpoint executes that
	// instruction before stopping at rip again.
	RunTo(rip uint64) (Exit, error)
	// Kick makes the Run or RunTo in progress, or else the next one, return
	// ExitKicked promptly, at an instruction boundary. Run's is one where
	// RunTo can stop too (on KVM: never in an STI's or MOV SS's interrupt
	// shadow), so that a replay can land there. Any goroutine may call it.
	Kick()
	// Complete performs the access of the PIO or MMIO exit e against the
	// machine's devices; the guest then continues after it. For a read it
	// fills e.Data. A device that reads the time, the disk or emits an
	// output does so through Env, during this call.
	Complete(e *Exit) error
	// InjectPending delivers the highest-priority pending interrupt if the
	// guest can take one now, and otherwise, if one is pending, arranges an
	// ExitWindow for when it can. It reports whether it delivered one. It is
	// a deterministic function of the machine's state.
	InjectPending() (delivered bool, err error)
	// Halted reports whether the guest waits in HLT: Run must not be called
	// until InjectPending delivered an interrupt.
	Halted() bool
	// TimerDeadline is the guest time (ns, Env.Now's scale) at which the
	// machine's timer next raises an interrupt, if one is armed.
	TimerDeadline() (uint64, bool)
	// PollTimers advances the machine's timers to guest time now, raising
	// their interrupts if due.
	PollTimers(now uint64)
	// DeliverFrame hands a received network frame to the network device,
	// which writes it into guest memory (or drops it, as a NIC does) and
	// raises its interrupt.
	DeliverFrame(frame []byte)
	// Mark starts a new interval for Signature's dirty-page hash (not
	// Harvest's: that is another). The engine calls it after every stop it
	// records. RestoreState also starts one.
	Mark() error
	// Signature describes the guest's current point.
	Signature() (Signature, error)
	// Matches reports whether Signature() would equal sig. It hashes the
	// dirty pages (the costly part) only when RIP and registers match, so
	// the backup's stops at a landing's RIP that are not the landing cost
	// little.
	Matches(sig Signature) (bool, error)
}

// Env is everything a Stepper reads from or writes to outside itself. The
// engine provides it: the primary's records what it answers, the backup's
// answers from the log until it goes live. Called only from within Stepper
// methods, on the engine's goroutine.
//
// An error from Env is fatal to the machine. Outputs are never refused for
// lack of room: the primary's Env blocks until the output buffer has room
// (back-pressure), because a refusal the backup could not reproduce would
// make the two executions diverge.
type Env interface {
	// Now is the guest time in nanoseconds, never decreasing.
	Now() uint64
	// ReadDisk fills p from the disk at byte offset off.
	ReadDisk(p []byte, off int64) error
	// WriteDisk writes p to the disk at off. It must not retain p.
	WriteDisk(p []byte, off int64) error
	// FlushDisk returns once every disk write made before it is durable:
	// on the primary, once the backup has the log through them and they
	// are released and synced (the guest waits meanwhile); on a backup,
	// at once (its writes are the primary's).
	FlushDisk() error
	// SendFrame transmits a network frame. It must not retain frame.
	SendFrame(frame []byte) error
	// Console receives the guest's serial output: a debugging aid, printed
	// on the primary as it comes and not held for the backup.
	Console(p []byte)
}
