package sim

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"

	"github.com/ftckpt/ftckpt/vmm"
)

// Devices is where a CheckpointGuest's machine reaches the world: a
// replay.Env without the clock, which the CheckpointGuest keeps itself
// (guest time is part of the state it saves, as a KVM guest's clock is).
// Its methods are called on the guest's vCPU goroutine and must not block:
// an output that cannot be taken now is refused with vmm.ErrOutputFull and
// tried again later (see CheckpointGuest). Any other error stops the guest.
type Devices interface {
	ReadDisk(p []byte, off int64) error
	WriteDisk(p []byte, off int64) error
	SendFrame(frame []byte) error
	Console(p []byte)
}

// DiskFlusher is Devices whose disk has a flush: the guest's FLUSH
// completes when FlushDisk returns nil (every earlier write durable).
type DiskFlusher interface {
	FlushDisk() error
}

// CheckpointGuest runs a Machine free, on a goroutine of its own (its
// "vCPU"), as a KVM vCPU thread runs a guest, and so makes it a
// checkpoint-mode machine (machine.Runner): the stand-in for
// kvmmachine.Runner where /dev/kvm cannot be opened. Never paused, it is
// an unprotected machine: the benchmarks' baseline.
//
// The vCPU goroutine delivers interrupts as hardware does, not as replay
// mode must: a received frame kicks the guest at once, and the timer kicks
// it at its deadline. It waits in HLT in real time. An output its Devices
// refuse with vmm.ErrOutputFull leaves the access pending (the guest is
// stopped on the instruction, which SaveState carries); it is tried again
// on Resume, Poke, or after retryInterval.
//
// Locking: mu guards the lifecycle fields (paused, copiers, parked, ...).
// Between parks the vCPU goroutine owns the Machine; every other method
// that touches it (CopyLive, Harvest, SaveState, RestoreState) first has it
// parked, through mu. Receive, Poke, Instructions and ClockZero are safe at
// any time.
type CheckpointGuest struct {
	m    *Machine
	devs Devices

	mu   sync.Mutex
	cond *sync.Cond
	// paused is set between Pause and Resume; copiers counts CopyLive calls
	// that need the vCPU parked. The vCPU parks while either holds.
	paused  bool
	copiers int
	// parked: the vCPU goroutine waits in park, the Machine at rest.
	parked  bool
	started bool
	closing bool
	done    bool  // the vCPU goroutine has ended
	err     error // why, if not a power-off or Close
	clock   ckClock

	stopped chan struct{}
	// wake gets the vCPU goroutine's attention in a halt or retry wait.
	wake chan struct{}
	// kickTimer kicks the guest at its timer's deadline; waitTimer ends
	// waits. Used by the vCPU goroutine only.
	kickTimer *time.Timer
	waitTimer *time.Timer

	rxMu sync.Mutex
	rx   [][]byte

	instructions atomic.Uint64
}

// ckClock is guest time: base at host time since, advancing only once the
// guest has started. Guarded by CheckpointGuest.mu.
type ckClock struct {
	base    uint64
	since   time.Time
	running bool
}

func (c *ckClock) now() uint64 {
	if !c.running {
		return c.base
	}
	return c.base + uint64(time.Since(c.since))
}

// The bounds of a CheckpointGuest's host side: received frames waiting for
// the vCPU (more are dropped, as a NIC drops), and how long a refused
// output waits before it is tried again unprompted.
const (
	ckRxQueue     = 256
	retryInterval = time.Millisecond
)

// NewCheckpointGuest builds the built-in guest (see New) on memPages pages
// of RAM, wired to devs, not started.
func NewCheckpointGuest(guest string, memPages int, devs Devices, params ...Param) (*CheckpointGuest, error) {
	if devs == nil {
		return nil, errors.New("a CheckpointGuest needs its Devices")
	}
	g := newCheckpointGuest(devs)
	m, err := New(guest, memPages, ckEnv{g}, params...)
	if err != nil {
		return nil, err
	}
	g.m = m
	return g, nil
}

// newCheckpointGuest returns a guest without its machine, which the caller
// builds on ckEnv{g} and sets.
func newCheckpointGuest(devs Devices) *CheckpointGuest {
	g := &CheckpointGuest{devs: devs, stopped: make(chan struct{}), wake: make(chan struct{}, 1)}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// Memory implements machine.Runner: guest RAM, stable for the guest's
// life. The primary reads it while the guest is paused; the backup's
// receiver writes it before the guest starts.
func (g *CheckpointGuest) Memory() []byte { return g.m.Memory() }

// Start implements machine.Runner: the vCPU goroutine starts, and guest
// time with it. A paused guest starts parked.
func (g *CheckpointGuest) Start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.started:
		return errors.New("start: the guest has already started")
	case g.closing:
		return errors.New("start: the guest is closed")
	}
	g.started = true
	g.clock.since, g.clock.running = time.Now(), true
	g.kickTimer = time.AfterFunc(time.Hour, g.m.Kick)
	g.kickTimer.Stop()
	g.waitTimer = time.NewTimer(time.Hour)
	g.waitTimer.Stop()
	go g.vcpu()
	return nil
}

// Stopped implements machine.Runner: closed when the vCPU goroutine ends
// (the guest powered off or faulted, a device failed, or Close).
func (g *CheckpointGuest) Stopped() <-chan struct{} { return g.stopped }

// Err is what stopped the guest: nil while it runs, after a power-off and
// after Close.
func (g *CheckpointGuest) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Close stops the vCPU goroutine for good and waits for it.
func (g *CheckpointGuest) Close() {
	g.mu.Lock()
	g.closing = true
	started := g.started
	g.cond.Broadcast()
	g.mu.Unlock()
	if started {
		g.m.Kick()
		g.poke()
		<-g.stopped
	}
}

// Pause implements machine.Runner: it returns once the vCPU goroutine is
// parked at an instruction boundary (or has ended). Outputs it started have
// completed or been refused. Any goroutine may call it.
func (g *CheckpointGuest) Pause() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = true
	g.quiesceLocked()
	return nil
}

// Resume implements machine.Runner: the guest runs again (unless a
// CopyLive holds it a moment longer) and retries a refused output.
func (g *CheckpointGuest) Resume() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.paused {
		return errors.New("resume: the guest is not paused")
	}
	g.paused = false
	g.cond.Broadcast()
	g.poke()
	return nil
}

// quiesceLocked waits until the vCPU goroutine is parked or gone.
// Precondition: mu held, and paused or copiers set.
func (g *CheckpointGuest) quiesceLocked() {
	if g.started && !g.done && !g.parked {
		g.m.Kick() // out of Run; a kick it does not consume only ends a later run early
		g.poke()   // out of a halt or retry wait
	}
	for g.started && !g.done && !g.parked {
		g.cond.Wait()
	}
}

// atRestLocked says whether the Machine may be read or written by a caller
// other than the vCPU goroutine. Precondition: mu held.
func (g *CheckpointGuest) atRestLocked() bool {
	return !g.started || g.done || (g.parked && g.paused)
}

// CopyLive implements machine.Runner. The machine is software, so a copy
// concurrent with its writes would be a data race: CopyLive parks the vCPU
// for the copy, which is then never torn.
func (g *CheckpointGuest) CopyLive(dst []byte, pfn uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.copiers++
	g.quiesceLocked()
	copy(dst, g.m.mem[pfn*PageSize:(pfn+1)*PageSize])
	g.copiers--
	g.cond.Broadcast()
}

// Harvest implements machine.Runner: it ORs into dst every page written
// since the previous Harvest (by the guest or by its devices: every write
// goes through markWrite) and starts a new interval. Precondition: paused.
func (g *CheckpointGuest) Harvest(dst *machine.Bitmap) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.atRestLocked() {
		return errors.New("harvest: the guest is running")
	}
	m := g.m
	w := dst.Words()
	if dst.Len() != uint64(len(m.mem)/PageSize) || len(w) != len(m.dirty) {
		return fmt.Errorf("harvest: a bitmap of %d pages for a guest of %d", dst.Len(), len(m.mem)/PageSize)
	}
	// The dirty bits are the Signature interval's; nothing calls Mark on a
	// CheckpointGuest's machine, so here they are the harvest interval's.
	for i, d := range m.dirty {
		w[i] |= d
	}
	clear(m.dirty)
	return nil
}

// The state encoding of a CheckpointGuest: ckStateMagic, a little-endian
// uint16 version, the guest time (uint64 ns), the Machine's state (its own
// framed encoding, stateSize bytes), and a CRC-32C of everything before.
const (
	ckStateMagic   = "SIMG"
	ckStateVersion = 1
)

var ckStateSize = len(ckStateMagic) + 2 + 8 + stateSize + 4

// SaveState implements machine.Runner: the machine state and the guest
// time. Precondition: paused or not started.
func (g *CheckpointGuest) SaveState() ([]byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.atRestLocked() {
		return nil, errors.New("save state: the guest is running")
	}
	st, err := g.m.SaveState()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, ckStateSize)
	b = append(b, ckStateMagic...)
	b = binary.LittleEndian.AppendUint16(b, ckStateVersion)
	b = binary.LittleEndian.AppendUint64(b, g.clock.now())
	b = append(b, st...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// RestoreState implements machine.Runner: the machine continues from the
// saved state, and guest time from the saved time. It verifies everything
// before changing anything. Precondition: paused or not started.
func (g *CheckpointGuest) RestoreState(state []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.atRestLocked() {
		return errors.New("restore state: the guest is running")
	}
	hdr := len(ckStateMagic) + 2
	switch {
	case len(state) < hdr:
		return fmt.Errorf("restore state: %d bytes: too short for a header", len(state))
	case string(state[:len(ckStateMagic)]) != ckStateMagic:
		return fmt.Errorf("restore state: bad magic %q", state[:len(ckStateMagic)])
	}
	if v := binary.LittleEndian.Uint16(state[len(ckStateMagic):]); v != ckStateVersion {
		return fmt.Errorf("restore state: version %d: this guest reads version %d", v, ckStateVersion)
	}
	if len(state) != ckStateSize {
		return fmt.Errorf("restore state: %d bytes: version %d state is %d", len(state), ckStateVersion, ckStateSize)
	}
	body := state[:len(state)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(state[len(body):]); got != want {
		return fmt.Errorf("restore state: checksum %#08x, expected %#08x: corrupt", got, want)
	}
	if err := g.m.RestoreState(body[hdr+8:]); err != nil {
		return err
	}
	g.clock.base, g.clock.since = binary.LittleEndian.Uint64(body[hdr:]), time.Now()
	return nil
}

// Receive hands the guest a frame from the network: it is delivered at the
// vCPU's next boundary, which it brings about at once (a NIC's interrupt).
// A full queue drops it and Receive reports false. Safe from any goroutine.
func (g *CheckpointGuest) Receive(frame []byte) bool {
	g.rxMu.Lock()
	if len(g.rx) >= ckRxQueue {
		g.rxMu.Unlock()
		return false
	}
	g.rx = append(g.rx, append([]byte(nil), frame...))
	g.rxMu.Unlock()
	g.m.Kick()
	g.poke()
	return true
}

// Poke makes the vCPU try a refused output again now: a device's Poll.
func (g *CheckpointGuest) Poke() { g.poke() }

func (g *CheckpointGuest) poke() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// Instructions is how many instructions the guest has executed, as of its
// last stop. Safe from any goroutine.
func (g *CheckpointGuest) Instructions() uint64 { return g.instructions.Load() }

// ClockZero is the host time at which guest time (what the guest reads
// from its clock) was zero, had it always run at host speed.
func (g *CheckpointGuest) ClockZero() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.clock.running {
		return time.Now().Add(-time.Duration(g.clock.base))
	}
	return g.clock.since.Add(-time.Duration(g.clock.base))
}

// guestNow is the guest's clock, read by its devices.
func (g *CheckpointGuest) guestNow() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.clock.now()
}

// vcpu is the vCPU goroutine.
func (g *CheckpointGuest) vcpu() {
	err := g.loop()
	g.kickTimer.Stop()
	g.waitTimer.Stop()
	g.mu.Lock()
	g.done, g.err = true, err
	g.cond.Broadcast()
	g.mu.Unlock()
	close(g.stopped)
}

// errStop ends the loop without an error: power-off or Close.
var errStop = errors.New("stop")

func (g *CheckpointGuest) loop() error {
	for {
		err := g.step()
		if errors.Is(err, errStop) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// step parks if asked to, then takes the guest from one boundary to the
// next stop and handles it.
func (g *CheckpointGuest) step() error {
	if !g.park() {
		return errStop
	}
	m := g.m
	if m.cpu.Pend.Kind != 0 { // an output refused earlier, or restored so
		e := m.cpu.Pend.exit(m.cpu.PC)
		return g.complete(&e)
	}
	g.rxMu.Lock()
	frames := g.rx
	g.rx = nil
	g.rxMu.Unlock()
	for _, f := range frames {
		m.DeliverFrame(f)
	}
	if dl, ok := m.TimerDeadline(); ok {
		if now := g.guestNow(); now >= dl {
			m.PollTimers(now)
		}
	}
	if _, err := m.InjectPending(); err != nil {
		return fmt.Errorf("injecting an interrupt: %w", err)
	}
	if m.Halted() {
		g.wait(true)
		return nil
	}
	if dl, ok := m.TimerDeadline(); ok {
		g.kickTimer.Reset(time.Duration(dl - min(dl, g.guestNow())))
	}
	e, err := m.Run()
	g.kickTimer.Stop()
	g.instructions.Store(m.Instructions())
	if err != nil {
		return fmt.Errorf("running the guest: %w", err)
	}
	if e.Kind.IsIO() {
		return g.complete(&e)
	}
	return nil
}

// complete performs an access; a refused output stays pending and waits.
func (g *CheckpointGuest) complete(e *machine.Exit) error {
	err := g.m.Complete(e)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, machine.ErrPowerOff):
		return errStop
	case errors.Is(err, vmm.ErrOutputFull):
		g.wait(false)
		return nil
	}
	return err
}

// wait waits, in a halt until the guest's timer deadline, or after a
// refused output retryInterval, or until poked (a frame, a pause, a
// resume, Close).
func (g *CheckpointGuest) wait(halted bool) {
	d := retryInterval
	if halted {
		d = -1
		if dl, ok := g.m.TimerDeadline(); ok {
			d = time.Duration(dl - min(dl, g.guestNow()))
		}
	}
	if d >= 0 {
		g.waitTimer.Reset(d)
		defer g.waitTimer.Stop()
	}
	select {
	case <-g.wake:
	case <-g.waitTimer.C:
	}
}

// park waits while the guest is paused or copied; it reports false once
// the guest is closing.
func (g *CheckpointGuest) park() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for (g.paused || g.copiers > 0) && !g.closing {
		g.parked = true
		g.cond.Broadcast()
		g.cond.Wait()
	}
	g.parked = false
	return !g.closing
}

// ckEnv is the Env of a CheckpointGuest's machine: its clock and its
// Devices.
type ckEnv struct{ g *CheckpointGuest }

func (e ckEnv) Now() uint64                         { return e.g.guestNow() }
func (e ckEnv) ReadDisk(p []byte, off int64) error  { return e.g.devs.ReadDisk(p, off) }
func (e ckEnv) WriteDisk(p []byte, off int64) error { return e.g.devs.WriteDisk(p, off) }

// FlushDisk is the Devices' if they are a DiskFlusher (vmm.ErrOutputFull
// leaves the guest's FLUSH pending, to be tried again), and otherwise
// completes at once.
func (e ckEnv) FlushDisk() error {
	if f, ok := e.g.devs.(DiskFlusher); ok {
		return f.FlushDisk()
	}
	return nil
}
func (e ckEnv) SendFrame(frame []byte) error { return e.g.devs.SendFrame(frame) }
func (e ckEnv) Console(p []byte)             { e.g.devs.Console(p) }
