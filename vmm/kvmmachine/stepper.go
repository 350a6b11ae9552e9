package kvmmachine

import (
	"errors"
	"fmt"
	"hash/maphash"
	"slices"

	"github.com/ftckpt/ftckpt/guests"
	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// StepperConfig describes the machine NewStepper builds: one vCPU, no
// in-kernel irqchip (the userspace PIC and PIT), a bundled guest and the
// virtio devices it uses, attached as every machine attaches them
// (vmm.Devices). Two Steppers built from the same StepperConfig are the same machine:
// one's state restores into the other.
type StepperConfig struct {
	// Guest is the bundled guest program (guests.Names).
	Guest string
	// MemSize is the guest RAM in bytes; 0 means 64 MiB. At most
	// vmm.LowRAMTop, so that RAM is guest-physical from 0 (Memory).
	MemSize int64
	// Params are the guest's parameters.
	Params map[string]string
	// Net attaches virtio-net (MAC, zero: vmm.DefaultGuestMAC): transmitted
	// frames go to Env.SendFrame, received ones come from DeliverFrame.
	Net bool
	MAC [6]byte
	// DiskSize, if not zero, attaches virtio-blk over a disk of that many
	// bytes (a multiple of 512) read and written through the Env.
	DiskSize int64
	// SingleStep makes RunTo single-step the guest instead of arming a
	// hardware breakpoint: slower, and independent of the debug registers.
	// A KVM that ignores hardware breakpoints (vmm.ProbeHardwareBreakpoints)
	// gets single steps whatever this says.
	SingleStep bool
	// Track builds the dirty-page tracker on the machine, before its guest
	// is loaded: the KVM dirty bitmap, harvested at every stop the engine
	// records (dirtylog.New(m, dirtylog.ModeBitmap)).
	Track func(m *vmm.Machine) (Tracker, error)
}

func (c *StepperConfig) validate() error {
	if c.Track == nil {
		return errors.New("a Stepper needs a dirty-page tracker (StepperConfig.Track)")
	}
	if c.MemSize == 0 {
		c.MemSize = 64 << 20
	}
	if err := vmm.ValidateMemSize(c.MemSize); err != nil {
		return err
	}
	if c.MemSize > vmm.LowRAMTop {
		return fmt.Errorf("memory size %d bytes: a replayed machine has at most %d MiB, all below the MMIO hole", c.MemSize, vmm.LowRAMTop>>20)
	}
	if c.DiskSize < 0 || c.DiskSize%512 != 0 {
		return fmt.Errorf("disk of %d bytes: not a multiple of 512", c.DiskSize)
	}
	return nil
}

// Stepper is a machine.Stepper on KVM (a vmm.Stepper): the replay engine's
// guest on real hardware. Every device's non-determinism goes through the
// Env given to NewStepper (see devices.go): the guest clock and the PIT
// read Env.Now, the serial port writes Env.Console, virtio-blk reads and
// writes the disk with Env.ReadDisk and Env.WriteDisk, virtio-net transmits
// with Env.SendFrame and receives only in DeliverFrame. No backend
// goroutine touches a device.
//
// An exit's RIP is KVM's: after HLT the next instruction's; for an access
// the accessing instruction's or, on a KVM that advances RIP before exiting
// (kvm-pvm does for OUT), the next one's. It is the same on every execution
// on one KVM, not across KVMs.
//
// As machine.Stepper says, the engine calls every method from one
// goroutine except Kick, which any goroutine may call.
type Stepper struct {
	cfg     StepperConfig
	st      *vmm.Stepper
	mem     *vmm.GuestMemory
	net     *vmm.VirtioNet // nil without Net
	tracker Tracker
	// dirty accumulates the pages written since Mark; scratch takes what
	// Mark discards.
	dirty, scratch *machine.Bitmap
	// written accumulates what Mark harvested, for Harvest.
	written *machine.Bitmap
	// base holds, for every page of RAM, a hash of its contents when Mark
	// last harvested it (or at creation or RestoreState, for pages not
	// harvested since): Signature leaves out a dirty page whose contents
	// are still those. baseSeed is its seed; these hashes never leave the
	// process.
	base     []uint64
	baseSeed maphash.Seed
	// fault is the first error an Env call returned inside a device.
	fault kvmFault
	land  kvmLanding
}

var _ machine.Stepper = (*Stepper)(nil)

// NewStepper builds the machine cfg describes, loads its guest and wires
// its devices to env. Close it when done.
func NewStepper(cfg StepperConfig, env machine.Env) (*Stepper, error) {
	if env == nil {
		return nil, errors.New("a Stepper needs an Env")
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	img, err := guests.Image(cfg.Guest)
	if err != nil {
		return nil, err
	}
	st, err := vmm.NewStepper(vmm.Config{VCPUs: 1, MemSize: cfg.MemSize, Params: cfg.Params, Console: kvmConsole{env}})
	if err != nil {
		return nil, err
	}
	k := &Stepper{cfg: cfg, st: st}
	built := false
	defer func() {
		if !built {
			k.Close()
		}
	}()
	// Whether RunTo may use hardware breakpoints: probed once per process,
	// here at start-up rather than at the first landing.
	hw, err := st.HardwareBreakpoints()
	if err != nil {
		return nil, err
	}
	k.land.singleStep = cfg.SingleStep || !hw
	m := st.Machine()
	k.mem = m.Memory()
	var devs vmm.Devices
	if cfg.Net {
		devs.Net = &vmm.NetConfig{MAC: cfg.MAC, Sink: kvmSink{env, &k.fault}, RxBacklog: 1}
	}
	if cfg.DiskSize > 0 {
		devs.Disk = &vmm.BlkConfig{Disk: &kvmDisk{env, cfg.DiskSize, &k.fault}}
	}
	att, err := m.AttachDevices(devs)
	if err != nil {
		return nil, err
	}
	k.net = att.Net
	if k.tracker, err = cfg.Track(m); err != nil {
		return nil, err
	}
	if err := m.LoadBareMetal(img, att.Boot); err != nil {
		return nil, err
	}
	st.SetTimeSource(env.Now)
	k.dirty, k.scratch = machine.NewBitmap(k.mem.Pages()), machine.NewBitmap(k.mem.Pages())
	k.written = machine.NewBitmap(k.mem.Pages())
	k.base, k.baseSeed = make([]uint64, k.mem.Pages()), maphash.MakeSeed()
	k.rebaseAll()
	if err := k.Mark(); err != nil {
		return nil, err
	}
	built = true
	return k, nil
}

// Close releases the machine.
func (k *Stepper) Close() error {
	var errs []error
	if k.tracker != nil {
		errs = append(errs, k.tracker.Close())
	}
	return errors.Join(append(errs, k.st.Close())...)
}

// Run implements machine.Stepper.
func (k *Stepper) Run() (machine.Exit, error) {
	if k.fault.err != nil {
		return machine.Exit{}, k.fault.err
	}
	s, err := k.land.run(k.st)
	if err != nil {
		return machine.Exit{}, err
	}
	return kvmExit(s)
}

// RunTo implements machine.Stepper, with a hardware breakpoint or by single steps
// (StepperConfig.SingleStep, or a KVM that ignores breakpoints); see
// kvmLanding.
func (k *Stepper) RunTo(rip uint64) (machine.Exit, error) {
	if k.fault.err != nil {
		return machine.Exit{}, k.fault.err
	}
	s, err := k.land.runTo(k.st, rip)
	if err != nil {
		return machine.Exit{}, err
	}
	return kvmExit(s)
}

// Kick implements machine.Stepper: immediate_exit and a signal to the vCPU thread.
func (k *Stepper) Kick() { k.st.Kick() }

// Complete implements machine.Stepper. A device that calls the Env does so here; an
// Env error is returned (and fails every later call).
func (k *Stepper) Complete(e *machine.Exit) error {
	if k.fault.err != nil {
		return k.fault.err
	}
	s, err := kvmStepExit(e)
	if err != nil {
		return err
	}
	err = k.st.Complete(&s)
	if k.fault.err != nil {
		return k.fault.err
	}
	if errors.Is(err, vmm.ErrPoweredOff) {
		status, _ := k.st.Machine().Wait() // stopped: returns at once
		return fmt.Errorf("%w with status %d", machine.ErrPowerOff, status)
	}
	if err != nil {
		return err
	}
	e.Data = s.Data
	return nil
}

// InjectPending implements machine.Stepper with the userspace PIC.
func (k *Stepper) InjectPending() (bool, error) {
	if k.fault.err != nil {
		return false, k.fault.err
	}
	delivered, err := k.st.Inject()
	if delivered {
		k.land.delivered()
	}
	return delivered, err
}

// AskWindows says whether InjectPending may ask KVM for an ExitWindow
// (vmm.Stepper.AskWindows): a KVM reports windows where it notices them,
// not where they open, so a replay backup turns them off, and a primary
// names the stop of each by its signature (replay.WindowAsker).
func (k *Stepper) AskWindows(on bool) { k.st.AskWindows(on) }

// Halted implements machine.Stepper.
func (k *Stepper) Halted() bool { return k.st.Halted() }

// TimerDeadline implements machine.Stepper: the PIT's next interrupt.
func (k *Stepper) TimerDeadline() (uint64, bool) { return k.st.TimerDeadline() }

// PollTimers implements machine.Stepper.
func (k *Stepper) PollTimers(now uint64) { k.st.PollTimers(now) }

// DeliverFrame implements machine.Stepper: the frame goes into the buffer the guest
// posted, or is dropped (no network device, no buffer, bad size).
func (k *Stepper) DeliverFrame(frame []byte) {
	if k.net != nil {
		k.net.ReceiveNow(frame)
	}
}

// Mark implements machine.Stepper: it harvests and drops the pages written so far,
// and takes their contents as the base Signature compares against.
//
// Cost, at every stop the engine records: KVM_GET_DIRTY_LOG, in which the
// kernel copies one bit per page of RAM (2 KiB for 64 MiB, 96 KiB for
// 3 GiB), KVM_CLEAR_DIRTY_LOG for the runs of dirty pages (re-protecting
// them, so the guest's next write to each faults once into KVM), a scan
// of the VMM's bitmap (one word per 64 pages) and a hash (maphash) of each
// page written. So O(RAM/64) words plus O(pages written), whatever the
// guest did.
func (k *Stepper) Mark() error {
	if k.fault.err != nil {
		return k.fault.err
	}
	k.scratch.Clear()
	if _, err := k.tracker.Harvest(k.scratch); err != nil {
		return err
	}
	k.written.Or(k.scratch)
	k.written.Or(k.dirty)
	k.rebase(k.scratch)
	k.rebase(k.dirty)
	k.dirty.Clear()
	return nil
}

// pageHash is the base hash of RAM page p's contents now.
func (k *Stepper) pageHash(p uint64) uint64 {
	return maphash.Bytes(k.baseSeed, k.mem.Bytes()[p*vmm.PageSize:(p+1)*vmm.PageSize])
}

// rebase takes the contents of the pages set in b as their base.
func (k *Stepper) rebase(b *machine.Bitmap) {
	for r := range b.Runs() {
		for p := r.First; p < r.First+r.Count; p++ {
			k.base[p] = k.pageHash(p)
		}
	}
}

// rebaseAll takes the contents of every page as its base: at creation, and
// after RestoreState (Memory is written without dirty tracking). About
// 10 ms for 64 MiB.
func (k *Stepper) rebaseAll() {
	for p := range k.base {
		k.base[p] = k.pageHash(uint64(p))
	}
}

// Harvest implements machine.Stepper: the pages harvested since the previous
// Harvest (by Mark and Signature, and now), so a page Signature harvested
// since the last Mark may be reported twice.
func (k *Stepper) Harvest(dst *machine.Bitmap) error {
	if k.fault.err != nil {
		return k.fault.err
	}
	if _, err := k.tracker.Harvest(k.dirty); err != nil { // Signature's interval goes on
		return err
	}
	dst.Or(k.written)
	dst.Or(k.dirty)
	k.written.Clear()
	return nil
}

// Signature implements machine.Stepper: Regs hashes RAX..R15, RIP and RFLAGS
// (without the debug flags TF and RF: vmm.HashRegs); Dirty hashes (page
// number, contents) of each page written since Mark, by the vCPU (KVM's
// dirty log) or by a device (the VMM's bitmap), in page order, except:
//
//   - pages whose contents are what they were at Mark (their base hash). KVM
//     reports pages dirty that were not written: a page is marked when a
//     write to it faults, before the write, and a kick can stop the guest
//     in between; upstream KVM marks every page it maps writable, so a
//     machine fresh from RestoreState reports the pages its guest first
//     touches, reads included (both seen on kvm-pvm and under QEMU's TCG).
//     Which pages those are depends on the host, not on what the guest did.
//   - the guest's paging structures (vmm.Stepper.PagingPages): the hardware
//     writes accessed and dirty bits there on its own (speculatively, on
//     Intel), and QEMU's TCG reports the tables dirty after every VM entry.
//
// Costs a harvest (see Mark), a walk of the page tables and reading and
// hashing every dirty page.
func (k *Stepper) Signature() (machine.Signature, error) {
	if k.fault.err != nil {
		return machine.Signature{}, k.fault.err
	}
	rip, err := k.st.RIP()
	if err != nil {
		return machine.Signature{}, err
	}
	regs, err := k.st.RegsHash()
	if err != nil {
		return machine.Signature{}, err
	}
	if _, err := k.tracker.Harvest(k.dirty); err != nil {
		return machine.Signature{}, err
	}
	tables, err := k.st.PagingPages()
	if err != nil {
		return machine.Signature{}, err
	}
	skip := func(p uint64) bool {
		_, table := slices.BinarySearch(tables, p)
		return table || k.pageHash(p) == k.base[p]
	}
	return machine.Signature{RIP: rip, Regs: regs, Dirty: kvmDirtyHash(k.mem.Bytes(), k.dirty, skip)}, nil
}

// Matches implements machine.Stepper: GET_REGS first; the dirty log is harvested
// and hashed only when RIP and registers match (what a skipped harvest
// leaves in KVM's log, the next one collects).
func (k *Stepper) Matches(sig machine.Signature) (bool, error) {
	if k.fault.err != nil {
		return false, k.fault.err
	}
	rip, err := k.st.RIP()
	if err != nil || rip != sig.RIP {
		return false, err
	}
	regs, err := k.st.RegsHash()
	if err != nil || regs != sig.Regs {
		return false, err
	}
	got, err := k.Signature()
	return got == sig, err
}

// Memory implements machine.Stepper: RAM is one mapping, guest-physical from 0 (at
// most vmm.LowRAMTop). Writes through it are not dirty-tracked:
// RestoreState starts a new Mark interval.
func (k *Stepper) Memory() []byte { return k.mem.Bytes() }

// SaveState implements machine.Stepper: the vCPU, the PIC, PIT, clock, serial port,
// PCI and virtio devices, in vmm's checksummed encoding.
func (k *Stepper) SaveState() ([]byte, error) {
	if k.fault.err != nil {
		return nil, k.fault.err
	}
	return k.st.SaveState()
}

// RestoreState implements machine.Stepper.
func (k *Stepper) RestoreState(state []byte) error {
	if k.fault.err != nil {
		return k.fault.err
	}
	if err := k.st.RestoreState(state); err != nil {
		return err
	}
	k.land.delivered() // forget the last stop: the state was replaced
	k.rebaseAll()
	return k.Mark()
}
