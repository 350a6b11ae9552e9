package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
	"golang.org/x/sys/unix"
)

// MaxVCPUs is the most vCPUs a machine may have.
const MaxVCPUs = 64

// Addresses KVM needs for Intel VMX, inside the 32-bit MMIO hole.
const (
	tssGPA         = 0xfffbd000
	identityMapGPA = 0xfffbc000
)

// Config describes a machine.
type Config struct {
	// VCPUs is the number of vCPUs, 1 to MaxVCPUs.
	VCPUs int
	// MemSize is the guest RAM in bytes, MinMemory to MaxMemory, a multiple
	// of 2 MiB.
	MemSize int64
	// IRQChip selects the in-kernel PIC, IOAPIC, LAPIC and PIT. Without it
	// there is no interrupt controller in the kernel: interrupts are injected
	// from userspace with KVM_INTERRUPT, which needs a single vCPU.
	IRQChip bool
	// DirtyRingEntries, if non-zero, enables KVM's per-vCPU dirty rings with
	// that many entries (a power of two) instead of the dirty bitmap. KVM
	// requires this before any vCPU exists, so it is part of the machine.
	DirtyRingEntries int
	// Params are passed to a bare-metal guest in its boot-info page.
	Params map[string]string
	// Console receives the serial port's output; nil drops it.
	Console io.Writer
}

// Validate says what is wrong with the configuration, or nil.
func (c *Config) Validate() error {
	switch {
	case c.VCPUs < 1 || c.VCPUs > MaxVCPUs:
		return fmt.Errorf("%d vCPUs: must be 1 to %d", c.VCPUs, MaxVCPUs)
	case !c.IRQChip && c.VCPUs != 1:
		return fmt.Errorf("%d vCPUs without the in-kernel irqchip: userspace interrupt delivery supports 1 vCPU", c.VCPUs)
	case c.DirtyRingEntries < 0 || c.DirtyRingEntries&(c.DirtyRingEntries-1) != 0:
		return fmt.Errorf("dirty ring of %d entries: must be a power of two", c.DirtyRingEntries)
	}
	if err := ValidateMemSize(c.MemSize); err != nil {
		return err
	}
	return ValidateParams(c.Params)
}

// machineState is the machine's lifecycle:
//
//	created ──Start──▶ running ◀──Resume── paused
//	   │                  │ ──Pause──────────▲
//	   │                  └─(power-off, shutdown, error)──▶ stopped
//	   └─Pause, then Start (startPaused)──▶ paused
//
// Saving and restoring state is allowed in created and paused.
type machineState int

const (
	stateInvalid machineState = iota
	stateCreated
	stateRunning
	statePaused
	stateStopped
)

func (s machineState) String() string {
	switch s {
	case stateCreated:
		return "created"
	case stateRunning:
		return "running"
	case statePaused:
		return "paused"
	case stateStopped:
		return "stopped"
	}
	return fmt.Sprintf("invalid(%d)", int(s))
}

// ErrNotPaused is returned by operations that need a paused machine.
var ErrNotPaused = errors.New("machine is not paused")

// Machine is one virtual machine on KVM: guest memory, vCPU threads, devices,
// and the pause barrier that checkpointing is built on.
type Machine struct {
	cfg    Config
	kvmFd  int
	vmFd   int
	mem    *GuestMemory
	vcpus  []*VCPU
	bus    IOBus
	serial *Serial
	power  *PowerDevice
	clock  *Clock
	// pic and pit exist only without the in-kernel irqchip.
	pic *PIC
	pit *PIT
	vm  *vmComponent
	// pci is the PCI bus, once the first virtio device is attached.
	pci *PCIBus
	// devices are the machine's devices in attach order (see Device):
	// Pause quiesces them in this order and Resume wakes them; SaveState
	// and RestoreState walk them after the VM and the vCPUs (components).
	// attach appends under mu while the machine is created; from Start on
	// the list does not change and is read without mu.
	devices []Device
	// savedMSRs are the MSRs this host lets us save, in restore order.
	savedMSRs []uint32
	// regsByRun says a parked vCPU may read its registers, special
	// registers and events with one KVM_RUN (VCPU.readRegsByRun): the host
	// has KVM_CAP_SYNC_REGS for the three, and the LAPIC is in the kernel.
	regsByRun bool
	// onDirtyRingFull collects a full dirty ring; set before Start.
	onDirtyRingFull func(vcpu int) error
	// stepped is set by NewStepper: the Stepper drives the vCPU, so Start
	// is refused (and with it Pause and Resume, which need a started
	// machine).
	stepped bool

	// pauseReq is set while vCPUs are asked to stop entering the guest, only
	// once every vCPU's immediate_exit is (requestPauseLocked). It is
	// written under mu and read by vCPU threads without it.
	pauseReq atomic.Bool

	// haltMu and haltCond wake vCPUs halted in HLT (userspace interrupts
	// only). haltMu is a leaf: interrupt sources take it with device locks
	// held, so it must never be held while taking another lock but the
	// PIC's and the clock's.
	haltMu   sync.Mutex
	haltCond *sync.Cond

	// mu guards the lifecycle: the fields below say which of theirs. The
	// vCPUs park and capture without it (vcpuParked, vcpuCaptured); the
	// last to park takes it only to stop the machine.
	mu sync.Mutex
	// state is the lifecycle state; mu protects it.
	state machineState
	// parked counts vCPUs out of KVM_RUN and waiting. A vCPU adds itself
	// without mu (vcpuParked); a resume resets it under mu.
	parked atomic.Int32
	// round is the pause under way, nil when none is: set under mu before
	// any vCPU is asked to stop, cleared by the resume; the vCPUs read it
	// without mu as they park.
	round atomic.Pointer[pauseRound]
	// saving is set by PauseSaving for the pause it starts: once every vCPU
	// has parked, each captures its state on its own thread (VCPU.park),
	// and the one that finishes last then assembles the machine's whole
	// state (the VM's and the devices' with the vCPUs' captures, encoded)
	// into ahead, or its error into aheadErr. capturesLeft counts what is
	// left to do: one per vCPU, and the assembly. SaveState returns ahead
	// (once) instead of saving anything; Resume and RestoreState wait for
	// the captures to end, clear saving and drop ahead. mu protects
	// saving, ahead and aheadErr; capturesLeft is set under mu, and a
	// spinning waiter reads it without; the vCPUs count their captures
	// off without mu, and the last (vcpuCaptured) zeroes it under mu.
	saving       bool
	capturesLeft atomic.Int32
	ahead        []byte
	aheadErr     error
	// startPaused is set by a Pause before Start: Start then leaves the
	// machine paused, its devices quiesced; mu.
	startPaused bool
	// stopping is set, under mu, once the machine has been told to stop
	// for good; vCPUs read it without mu as they park.
	stopping atomic.Bool
	// stopStatus and stopErr say why it stopped; mu protects them.
	stopStatus uint8
	stopErr    error
	// stopped is closed when the machine reaches stateStopped.
	stopped chan struct{}
	// recycled holds up to recycledStates buffers of states given back
	// (RecycleState), for the next states to be encoded into.
	recycled chan []byte
}

// recycledStates bounds the buffers a machine keeps for its states: a
// checkpoint primary has a few states in flight at most.
const recycledStates = 4

// New creates a machine: the VM, its memory, its vCPU threads and its
// devices. The vCPUs do not run until Start.
func New(cfg Config) (*Machine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	installKickHandler()
	m := &Machine{cfg: cfg, kvmFd: -1, vmFd: -1, state: stateCreated, stopped: make(chan struct{}), recycled: make(chan []byte, recycledStates)}
	m.haltCond = sync.NewCond(&m.haltMu)
	built := false
	defer func() {
		if !built {
			m.release()
		}
	}()
	var err error
	if m.kvmFd, err = unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("opening /dev/kvm (is KVM available on this host?): %w", err)
	}
	// KVM_CREATE_VM fails with EINTR when a signal arrives (Go's runtime
	// sends some); QEMU and Firecracker try again, and so do we.
	vmFd, err := kvm.CreateVM(uintptr(m.kvmFd))
	for errors.Is(err, unix.EINTR) {
		vmFd, err = kvm.CreateVM(uintptr(m.kvmFd))
	}
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	m.vmFd = int(vmFd)
	if err := m.checkHost(); err != nil {
		return nil, err
	}
	if err := kvm.SetTSSAddr(vmFd, tssGPA); err != nil {
		return nil, fmt.Errorf("KVM_SET_TSS_ADDR: %w", err)
	}
	if err := kvmapi.SetIdentityMapAddr(m.vmFd, identityMapGPA); err != nil {
		return nil, err
	}
	if cfg.IRQChip {
		if err := kvm.CreateIRQChip(vmFd); err != nil {
			return nil, fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
		}
		if err := kvm.CreatePIT2(vmFd); err != nil {
			return nil, fmt.Errorf("KVM_CREATE_PIT2: %w", err)
		}
	}
	if cfg.DirtyRingEntries > 0 {
		if err := kvmapi.EnableCapability(m.vmFd, kvmapi.KVM_CAP_DIRTY_LOG_RING, uint64(cfg.DirtyRingEntries)*16); err != nil {
			return nil, fmt.Errorf("enabling a dirty ring of %d entries: %w", cfg.DirtyRingEntries, err)
		}
	}
	if m.mem, err = NewGuestMemory(cfg.MemSize); err != nil {
		return nil, err
	}
	for _, s := range m.mem.slots {
		r := kvm.UserspaceMemoryRegion{
			Slot: s.ID, Flags: kvmapi.KVM_MEM_LOG_DIRTY_PAGES, GuestPhysAddr: s.GPA, MemorySize: s.Size,
			UserspaceAddr: uint64(uintptrOf(m.mem.host[s.HostOffset:])),
		}
		if err := kvm.SetUserMemoryRegion(vmFd, &r); err != nil {
			return nil, fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d [%#x, +%#x): %w", s.ID, s.GPA, s.Size, err)
		}
	}
	cpuid, err := supportedCPUID(m.kvmFd)
	if err != nil {
		return nil, err
	}
	for i := 0; i < cfg.VCPUs; i++ {
		v, err := newVCPU(m, i, cpuid)
		if err != nil {
			return nil, err
		}
		m.vcpus = append(m.vcpus, v)
	}
	if m.savedMSRs, err = m.probeMSRs(); err != nil {
		return nil, err
	}
	if cfg.IRQChip {
		r, err := kvm.CheckExtension(uintptr(m.vmFd), kvm.Capability(kvmapi.KVM_CAP_SYNC_REGS))
		m.regsByRun = err == nil && r&syncedRegParts == syncedRegParts
	}
	if err := m.addDevices(); err != nil {
		return nil, err
	}
	built = true
	return m, nil
}

// checkHost refuses hosts that lack what ftckpt relies on.
func (m *Machine) checkHost() error {
	need := []struct {
		capability uintptr
		what       string
		min        int
	}{
		{kvmapi.KVM_CAP_IMMEDIATE_EXIT, "immediate_exit (the pause barrier)", 1},
		{kvmapi.KVM_CAP_XSAVE, "XSAVE state", 1},
		{kvmapi.KVM_CAP_XCRS, "XCRS state", 1},
		{kvmapi.KVM_CAP_VCPU_EVENTS, "vCPU events", 1},
		{kvmapi.KVM_CAP_DEBUGREGS, "debug registers", 1},
		{kvmapi.KVM_CAP_ADJUST_CLOCK, "KVM clock get/set", 1},
		{kvmapi.KVM_CAP_MAX_VCPUS, fmt.Sprintf("%d vCPUs", m.cfg.VCPUs), m.cfg.VCPUs},
	}
	if m.cfg.IRQChip {
		need = append(need, struct {
			capability uintptr
			what       string
			min        int
		}{kvmapi.KVM_CAP_PIT2, "in-kernel PIT2", 1})
	}
	for _, n := range need {
		r, err := kvm.CheckExtension(uintptr(m.vmFd), kvm.Capability(n.capability))
		if err != nil {
			return fmt.Errorf("KVM_CHECK_EXTENSION %d: %w", n.capability, err)
		}
		if int(r) < n.min {
			return fmt.Errorf("this KVM does not support %s (capability %d = %d)", n.what, n.capability, r)
		}
	}
	return nil
}

// addDevices creates the VM's kernel state and attaches the platform
// devices: without the in-kernel irqchip the userspace PIC and PIT (first:
// the devices after them raise interrupts through them), then the serial
// console, the power port and the clock.
func (m *Machine) addDevices() error {
	m.vm = &vmComponent{m: m}
	m.clock = NewClock(nil)
	serialIRQ := func(level bool) { m.SetIRQLine(4, level) }
	if !m.cfg.IRQChip {
		m.pic = NewPIC(m.wakeHalted)
		m.pit = NewPIT(func(level bool) { m.pic.SetIRQ(0, level) })
		serialIRQ = func(level bool) { m.pic.SetIRQ(4, level) }
		pit := &pitPorts{pit: m.pit, now: m.clock.Now}
		if err := m.attach(m.pic, pioRange{0x20, 2, m.pic}, pioRange{0xa0, 2, m.pic}); err != nil {
			return err
		}
		if err := m.attach(m.pit, pioRange{0x40, 1, pit}, pioRange{0x43, 1, pit}); err != nil {
			return err
		}
	}
	m.serial = NewSerial("com1", PortCOM1, m.cfg.Console, serialIRQ)
	if err := m.attach(m.serial, pioRange{PortCOM1, 8, m.serial}); err != nil {
		return err
	}
	m.power = &PowerDevice{onPowerOff: m.powerOff}
	if err := m.attach(m.power, pioRange{PortPower, 1, m.power}); err != nil {
		return err
	}
	return m.attach(m.clock, pioRange{PortClockLo, 8, m.clock})
}

// SetIRQLine drives an in-kernel irqchip input (a GSI: a PIC/IOAPIC pin).
// An error stops the machine: a VMM that cannot deliver interrupts cannot go
// on. Precondition: the machine has the in-kernel irqchip.
func (m *Machine) SetIRQLine(irq uint32, level bool) {
	if err := kvmapi.IRQLine(m.vmFd, irq, level); err != nil {
		// Asynchronously: the caller may hold a device lock that Pause
		// (holding mu) waits for in Quiesce.
		go m.fail(err)
	}
}

// Memory returns the guest's RAM.
func (m *Machine) Memory() *GuestMemory { return m.mem }

// VCPUs returns the vCPUs, in index order.
func (m *Machine) VCPUs() []*VCPU { return m.vcpus }

// VMFd returns the KVM VM file descriptor, for the dirty log.
func (m *Machine) VMFd() int { return m.vmFd }

// Config returns the machine's configuration.
func (m *Machine) Config() Config { return m.cfg }

// Clock returns the guest's clock device.
func (m *Machine) Clock() *Clock { return m.clock }

// LoadBareMetal loads a bare-metal guest image (ELF) and sets every vCPU to
// its 64-bit entry state (see guests/include/bootinfo.h).
// Precondition: the machine is created and not started.
func (m *Machine) LoadBareMetal(image []byte, devices []BootDevice) error {
	if err := m.requireState(stateCreated); err != nil {
		return err
	}
	entry, err := loadELF(m.mem, image)
	if err != nil {
		return err
	}
	if err := writeBareMetalTables(m.mem, &m.cfg, devices); err != nil {
		return err
	}
	return m.onEveryVCPU(func(v *VCPU) error { return v.setBareMetalEntry(entry) })
}

func (m *Machine) requireState(want machineState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state != want {
		return fmt.Errorf("machine is %v, need %v", m.state, want)
	}
	return nil
}

// onEveryVCPU runs fn on every vCPU's own thread, in parallel, and returns
// the first error. Precondition: the vCPUs are not running.
func (m *Machine) onEveryVCPU(fn func(*VCPU) error) error {
	errs := make([]error, len(m.vcpus))
	var wg sync.WaitGroup
	for i, v := range m.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.do(func() error { return fn(v) })
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Start lets the vCPUs run, or, after a Pause before Start, makes the
// machine paused without running them: Resume does. Precondition: the
// machine is created.
func (m *Machine) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stepped {
		return errors.New("cannot start a machine driven by a Stepper")
	}
	if m.state != stateCreated {
		return fmt.Errorf("cannot start a machine that is %v", m.state)
	}
	if m.startPaused {
		m.startPaused = false
		m.state = statePaused
		return nil
	}
	m.resumeLocked()
	return nil
}

// Pause quiesces every device, in attach order, then gets every vCPU out of
// KVM_RUN and returns when all are stopped. Every pending I/O completion has
// been applied to the vCPUs when it returns, so their state can be saved.
// Pausing a paused machine does nothing. Pausing a machine not started yet
// quiesces its devices, and Start then leaves it paused (a backup's guest
// going live held by its operator); Resume before Start undoes it.
func (m *Machine) Pause() error { return m.pause(false) }

// PauseSaving is Pause, and has every vCPU capture its state on its own
// thread as soon as all of them have stopped, while the caller goes on with
// the pause (harvesting and copying dirty pages): the next SaveState returns
// the machine's state with those captures, waiting for them if need be,
// instead of handing each vCPU's thread the work afterwards. The vCPUs'
// state cannot change in between: they do not run, and interrupts raised
// by others (IPIs) cannot be sent, since the capture starts only once every
// vCPU has stopped. A machine already paused is paused without a capture.
func (m *Machine) PauseSaving() error { return m.pause(true) }

func (m *Machine) pause(saving bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch m.state {
	case statePaused:
		return nil
	case stateCreated:
		if m.stepped {
			return errors.New("cannot pause a machine driven by a Stepper")
		}
		if !m.startPaused {
			m.startPaused = true
			for _, d := range m.devices {
				d.Quiesce()
			}
		}
		return nil
	case stateRunning:
	case stateStopped:
		return fmt.Errorf("cannot pause: %w", m.stopReasonLocked())
	default:
		return fmt.Errorf("cannot pause a machine that is %v", m.state)
	}
	if m.stopping.Load() {
		// The stop under way has asked the vCPUs to park, some perhaps
		// before this pause's round exists, so the last of them may not
		// end it: wait for the stop instead.
		m.mu.Unlock()
		<-m.stopped
		m.mu.Lock()
		return fmt.Errorf("cannot pause: %w", m.stopReasonLocked())
	}
	m.saving = saving
	m.ahead, m.aheadErr = nil, nil
	m.capturesLeft.Store(0)
	if m.saving {
		m.capturesLeft.Store(int32(len(m.vcpus)) + 1)
	}
	round := &pauseRound{saving: m.saving, parked: make(chan struct{}), captured: make(chan struct{})}
	m.round.Store(round)
	for _, d := range m.devices {
		d.Quiesce()
	}
	slow := time.AfterFunc(slowPause, m.logSlowPause)
	m.requestPauseLocked()
	m.awaitParkedLocked(round)
	slow.Stop()
	if m.stopping.Load() {
		m.stoppedLocked() // its last vCPU to park may not have said so yet
	}
	if m.state == stateRunning {
		m.state = statePaused
	}
	if m.state == stateStopped {
		return m.stopReasonLocked()
	}
	return nil
}

// slowPause is how long a pause may wait for the vCPUs to stop, or for
// their state, before it says so (logSlowPause, waitCapturedLocked): both
// take a millisecond or so, even on nested KVM.
const slowPause = time.Second

// logSlowPause logs, once, where a pause that has waited slowPause for the
// vCPUs stands: how many parked, and which were kicked. Called on its own
// goroutine; it reads only atomics, as the pausing thread holds mu.
func (m *Machine) logSlowPause() {
	kicked := make([]bool, len(m.vcpus))
	for i, v := range m.vcpus {
		kicked[i] = v.pauseKicked.Load()
	}
	slog.Warn("vmm: a pause is still waiting for its vCPUs to stop", "after", slowPause,
		"parked", m.parked.Load(), "vcpus", len(m.vcpus), "kicked", kicked, "pause requested", m.pauseReq.Load())
}

// waitSpin is how long a waiter for the vCPUs (to park, to finish their
// capture) spins before it sleeps. On kvm-pvm a vCPU parks about 40 µs
// after its kick and captures its state in about as long; a waiter asleep
// then took 33-55 µs more to wake, a spinning one 2 µs.
const waitSpin = 300 * time.Microsecond

// spinLocked returns once busy reports 0 or waitSpin has passed, spinning
// with mu released. busy is how many threads the awaited work keeps busy;
// it spins only if that leaves a core over for the spinner, and otherwise
// returns at once: the spinner would take a core from a vCPU thread yet to
// take its kick or capture its state (measured: 4 vCPUs on 2 cores paused
// 70 µs slower, yielding at each turn). busy must read only atomics; the
// caller checks again under mu.
// Precondition: mu is held; it is held again on return.
func (m *Machine) spinLocked(busy func() int) {
	if b := busy(); b == 0 || b >= runtime.NumCPU() {
		return
	}
	m.mu.Unlock()
	for start := time.Now(); busy() > 0 && time.Since(start) < waitSpin; {
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0) //nolint:errcheck // sched_yield cannot fail
	}
	m.mu.Lock()
}

// A pauseRound is one pause's meeting point of the vCPUs.
type pauseRound struct {
	// saving is PauseSaving's: each vCPU captures its state once all have
	// parked.
	saving bool
	// parked is closed by the last vCPU to park.
	parked chan struct{}
	// captured is closed, under mu, for PauseSaving, when the machine's
	// state is assembled (capturesLeft is 0), or when the machine stops.
	captured chan struct{}
}

// endCapturesLocked closes r.captured, once.
// Precondition: the machine's mu is held.
func (r *pauseRound) endCapturesLocked() {
	select {
	case <-r.captured:
	default:
		close(r.captured)
	}
}

// awaitParkedLocked waits until every vCPU has parked for round.
// Precondition: mu is held; it is released meanwhile.
func (m *Machine) awaitParkedLocked(round *pauseRound) {
	n := int32(len(m.vcpus))
	m.spinLocked(func() int { return int(n - m.parked.Load()) })
	if m.parked.Load() < n {
		m.mu.Unlock()
		<-round.parked
		m.mu.Lock()
	}
}

// waitCapturedLocked waits until the vCPUs have captured the state
// PauseSaving asked for and assembled the machine's, or the machine stops.
// Precondition: mu is held; it is released meanwhile.
func (m *Machine) waitCapturedLocked() {
	if m.saving && !m.stopping.Load() {
		m.spinLocked(m.captureThreads)
	}
	slow := time.AfterFunc(slowPause, func() {
		slog.Warn("vmm: a pause is still waiting for the vCPUs' state", "after", slowPause, "captures left", m.capturesLeft.Load(), "vcpus", len(m.vcpus))
	})
	defer slow.Stop()
	round := m.round.Load() // set whenever saving is
	for m.saving && m.capturesLeft.Load() > 0 && !m.stopping.Load() {
		m.mu.Unlock()
		<-round.captured
		m.mu.Lock()
	}
}

// requestPauseLocked asks every vCPU to leave KVM_RUN: immediate_exit makes
// the next KVM_RUN return at once (after completing pending I/O), and the
// signal kicks a vCPU that is already inside it.
// Precondition: mu is held.
func (m *Machine) requestPauseLocked() {
	if m.pauseReq.Load() { // mu held: no other requester
		return
	}
	// Every immediate_exit before pauseReq: a vCPU that sees pauseReq kicks
	// the others not kicked yet (helpKick), and a kick that lands while its
	// target is out of KVM_RUN does nothing. Its immediate_exit, set before
	// the kick could be sent, is what stops the target's next entry; set
	// after, the target could enter the guest between the kick and the
	// store, and never be kicked again (a pause that never ended, seen in
	// the emulated KVM with 4 vCPUs).
	for _, v := range m.vcpus {
		v.setImmediateExit(true)
	}
	m.pauseReq.Store(true)
	for _, v := range m.vcpus {
		v.kickForPause()
	}
	m.wakeHalted()
}

// helpKick is called by vCPU v's thread when it has left KVM_RUN for a
// pause: it kicks, from the last, the vCPUs that the pausing thread has not
// kicked yet, so that the kicks (a tgkill costs 15-50 µs on kvm-pvm, where
// the pausing thread is often preempted by the thread it kicks) go out
// from two threads at once. v needs no kick.
func (m *Machine) helpKick(v *VCPU) {
	v.pauseKicked.Store(true)
	for i := len(m.vcpus) - 1; i >= 0; i-- {
		m.vcpus[i].kickForPause()
	}
}

// Resume lets a paused machine run again.
func (m *Machine) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.waitCapturedLocked()
	if m.state == stateCreated && m.startPaused {
		m.startPaused = false
		for _, d := range m.devices {
			d.Wake()
		}
		return nil
	}
	if m.state != statePaused {
		return fmt.Errorf("cannot resume a machine that is %v", m.state)
	}
	m.resumeLocked()
	return nil
}

// resumeLocked releases every vCPU into its run loop, then wakes every
// device.
// Precondition: mu is held; every vCPU is parked, and done with any
// capture (waitCapturedLocked).
func (m *Machine) resumeLocked() {
	m.saving = false
	m.ahead, m.aheadErr = nil, nil
	for _, v := range m.vcpus {
		v.setImmediateExit(false)
		v.pauseKicked.Store(false)
	}
	m.pauseReq.Store(false)
	m.round.Store(nil)
	m.parked.Store(0)
	m.state = stateRunning
	for _, v := range m.vcpus {
		v.resume()
	}
	for _, d := range m.devices {
		d.Wake()
	}
}

// captureThreads is how many threads PauseSaving's captures keep busy: the
// vCPUs' still capturing, or the one assembling the machine's state once
// all are done.
func (m *Machine) captureThreads() int {
	left := int(m.capturesLeft.Load()) // the vCPUs' captures and the assembly
	if left <= 1 {
		return left
	}
	return left - 1
}

// vcpuParked is called by a vCPU thread when it has left KVM_RUN for a pause
// or a stop. It returns the pause the vCPU is to capture its state for
// (PauseSaving's), or nil; a pause only once every vCPU has parked (none
// can then change another's state), and the vCPU calls vcpuCaptured with
// it when done.
//
// It takes mu only when the vCPU is the last to park for a stop: on a host
// where waking a thread costs tens of microseconds (kvm-pvm: ~35 µs),
// vCPUs taking turns on mu, then again to leave their wait, made a 4-vCPU
// pause wait ~200 µs for them.
func (m *Machine) vcpuParked() (capture *pauseRound) {
	// Read before the vCPU counts itself: once all have, the pause may end
	// and the next begin.
	round := m.round.Load()
	if m.parked.Add(1) == int32(len(m.vcpus)) {
		// A stop that read parked before this vCPU added itself has left
		// the machine to stop here: stopping was set before that read.
		// Under mu, parked says whether all are parked still: a pause may
		// have seen them all and resumed them since.
		if m.stopping.Load() {
			m.mu.Lock()
			if m.parked.Load() == int32(len(m.vcpus)) {
				m.stoppedLocked()
			}
			m.mu.Unlock()
		}
		if round != nil {
			close(round.parked) // after the stop: the pause then sees it
		}
	}
	if round == nil || !round.saving {
		return nil
	}
	<-round.parked
	if m.stopping.Load() {
		return nil
	}
	return round
}

// vcpuCaptured is called by a vCPU thread when it has captured its state
// for PauseSaving. The vCPU that captured last then assembles the
// machine's state on its thread, while the one that paused the machine
// goes on with the pause (the primary copies dirty pages): SaveState then
// has nothing left to do. Devices and the VM do not change meanwhile: the
// devices are quiesced and no vCPU runs. The last capture sees the others'
// (their decrements of capturesLeft come before its own).
func (m *Machine) vcpuCaptured(round *pauseRound) {
	if m.capturesLeft.Add(-1) != 1 {
		return
	}
	state, err := m.saveState(true)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ahead, m.aheadErr = state, err
	m.capturesLeft.Store(0)
	round.endCapturesLocked()
}

// wakeHalted wakes vCPUs waiting in HLT (userspace interrupt delivery) to
// look again for a pending interrupt or a pause.
func (m *Machine) wakeHalted() {
	m.haltMu.Lock()
	m.haltCond.Broadcast()
	m.haltMu.Unlock()
}

// powerOff stops the machine with the guest's status.
func (m *Machine) powerOff(status uint8) { m.stop(status, nil) }

// fail stops the machine because of a VMM or KVM error.
func (m *Machine) fail(err error) { m.stop(0xff, err) }

func (m *Machine) stop(status uint8, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping.Load() {
		return
	}
	m.stopping.Store(true)
	m.stopStatus, m.stopErr = status, err
	if round := m.round.Load(); round != nil {
		round.endCapturesLocked() // waitCapturedLocked waits no more
	}
	// Every vCPU parked while running: a pause has them all parked and has
	// not yet seen it (it waits for mu), or the last has just added itself
	// and may stop the machine too (vcpuParked); none parks again before
	// a resume, so the stop is here.
	allParked := m.parked.Load() == int32(len(m.vcpus))
	if m.state == statePaused || m.state == stateCreated || allParked {
		m.stoppedLocked()
		return
	}
	m.requestPauseLocked()
}

// stoppedLocked puts a stopping machine whose vCPUs are all parked in
// stateStopped, once: a stop, the last vCPU to park for it, or a pause
// that saw them all parked, whichever holds mu first.
// Precondition: mu is held, stopping is set and no vCPU runs.
func (m *Machine) stoppedLocked() {
	if m.state != stateStopped {
		m.state = stateStopped
		close(m.stopped)
	}
}

func (m *Machine) stopReasonLocked() error {
	if m.stopErr != nil {
		return fmt.Errorf("machine stopped: %w", m.stopErr)
	}
	return fmt.Errorf("machine stopped: guest powered off with status %d", m.stopStatus)
}

// Wait blocks until the machine stops and returns the guest's power-off
// status, or the error that stopped it.
func (m *Machine) Wait() (uint8, error) {
	<-m.stopped
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopStatus, m.stopErr
}

// Stopped is closed when the machine has stopped.
func (m *Machine) Stopped() <-chan struct{} { return m.stopped }

// Close stops the machine if it runs and releases everything it holds.
func (m *Machine) Close() error {
	m.stop(0, errors.New("closed"))
	<-m.stopped
	for _, d := range m.devices {
		d.Quiesce() // no device may touch memory once it is unmapped
	}
	m.release()
	return nil
}

// release frees the vCPU threads, the fds and the memory.
func (m *Machine) release() {
	for _, v := range m.vcpus {
		v.close()
	}
	if m.vmFd >= 0 {
		unix.Close(m.vmFd)
		m.vmFd = -1
	}
	if m.kvmFd >= 0 {
		unix.Close(m.kvmFd)
		m.kvmFd = -1
	}
	if m.mem != nil {
		m.mem.Close()
	}
}

// kickSignal is sent to a vCPU thread to get it out of KVM_RUN.
const kickSignal = unix.SIGUSR1

var kickOnce sync.Once

// installKickHandler makes sure kickSignal is caught, by the Go runtime's
// handler, which ignores it: a kick only has to make KVM_RUN return EINTR.
// The runtime installs that handler at start for kickSignal whatever the
// process inherited, but signal.Ignore would replace it with SIG_IGN (and
// the kernel would then discard kicks): Notify puts it back. Reset then
// stops delivery to the channel, which would cost every kick a wake of the
// runtime's signal thread (about 40 µs more per stop on kvm-pvm, measured
// with BenchmarkPauseSave); Reset leaves the handler installed. Each vCPU
// thread unblocks the signal for itself (unblockKick).
func installKickHandler() {
	kickOnce.Do(func() {
		signal.Notify(make(chan os.Signal, 1), kickSignal)
		signal.Reset(kickSignal)
	})
}

// unblockKick unblocks kickSignal on the calling thread, which may have
// inherited a mask that blocks it. Precondition: the goroutine is locked to
// its thread for the thread's life (a vCPU thread).
func unblockKick() error {
	var set unix.Sigset_t
	set.Val[(kickSignal-1)/64] |= 1 << ((kickSignal - 1) % 64)
	if err := unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil); err != nil {
		return fmt.Errorf("unblocking signal %d for kicks: %w", kickSignal, err)
	}
	return nil
}

// SetDirtyRingFullHandler sets what a vCPU does when KVM reports its dirty
// ring full: the handler (run on that vCPU's thread) must collect and reset
// the ring before the vCPU can go on. Call it before Start.
func (m *Machine) SetDirtyRingFullHandler(h func(vcpu int) error) { m.onDirtyRingFull = h }

func (m *Machine) dirtyRingFull(vcpu int) error {
	if m.onDirtyRingFull == nil {
		return fmt.Errorf("dirty ring of vCPU %d is full and nothing collects it", vcpu)
	}
	return m.onDirtyRingFull(vcpu)
}
