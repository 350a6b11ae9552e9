package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftckpt/ftckpt/vmm/kvmapi"
	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU. It owns an OS thread, locked for its whole life,
// that makes every ioctl on the vCPU: KVM_RUN while the machine runs, and the
// work (state save/restore, setup) that others hand it while it is parked.
type VCPU struct {
	m     *Machine
	index int
	fd    int
	// run is the mmapped kvm_run area; runData views its start.
	run     []byte
	runData *kvm.RunData
	// cpuid is the vCPU's CPUID table, cpuidEncoded its encoding in the
	// saved state (see setCPUID).
	cpuid        *kvm.CPUID
	cpuidEncoded []byte
	// tid is the thread's id, for kicks; written once before New returns.
	tid int

	work     chan func()
	resumeCh chan struct{}
	quit     chan struct{}
	done     chan struct{}

	// halted is set, only without the in-kernel irqchip, while the guest
	// waits in HLT for an interrupt; touched only by the vCPU's thread or
	// while the vCPU is parked.
	halted bool
	// xsaveSize is the XSAVE buffer size this host needs.
	xsaveSize int
	// saved is the state capture last read from KVM, its buffers reused
	// from one capture to the next. Only the vCPU's thread writes it;
	// others read it after the capture, synchronised with the thread (do,
	// or the machine's capture count under mu).
	saved vcpuState
	// savedEncoded is saved's encoding, made on the thread by a capture
	// PauseSaving asked for, and savedErr that capture's error.
	savedEncoded []byte
	savedErr     error
	// pauseKicked is set once the vCPU has been kicked for the pause under
	// way, or has left KVM_RUN for it; Machine.resumeLocked clears it.
	pauseKicked atomic.Bool
	// kickTimer kicks the vCPU out of the guest when the userspace PIT's
	// next interrupt is due; used only by the vCPU's thread.
	kickTimer *time.Timer
}

// newVCPU creates vCPU index on its own thread and leaves it parked.
func newVCPU(m *Machine, index int, cpuid *kvm.CPUID) (*VCPU, error) {
	v := &VCPU{
		m: m, index: index, fd: -1,
		work: make(chan func()), resumeCh: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}),
		xsaveSize: kvmapi.XSaveBufferSize(m.vmFd),
	}
	ready := make(chan error)
	go v.thread(ready, cpuid)
	if err := <-ready; err != nil {
		<-v.done
		return nil, fmt.Errorf("vCPU %d: %w", index, err)
	}
	return v, nil
}

// Index is the vCPU's number, 0 for the bootstrap processor.
func (v *VCPU) Index() int { return v.index }

// Fd is the KVM vCPU file descriptor, for the dirty ring.
func (v *VCPU) Fd() int { return v.fd }

// thread is the vCPU's OS thread: it creates the vCPU, then alternates
// between serving work while parked and running the guest.
func (v *VCPU) thread(ready chan<- error, cpuid *kvm.CPUID) {
	runtime.LockOSThread() // never unlocked: the thread ends with the vCPU
	defer close(v.done)
	v.tid = unix.Gettid()
	if err := unblockKick(); err != nil {
		ready <- err
		return
	}
	if err := v.create(cpuid); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for {
		select {
		case fn := <-v.work:
			fn()
		case <-v.resumeCh:
			v.runUntilParked()
		case <-v.quit:
			v.destroy()
			return
		}
	}
}

func (v *VCPU) create(cpuid *kvm.CPUID) error {
	fd, err := kvm.CreateVCPU(uintptr(v.m.vmFd), v.index)
	if err != nil {
		return fmt.Errorf("KVM_CREATE_VCPU: %w", err)
	}
	v.fd = int(fd)
	size, err := kvm.GetVCPUMMmapSize(uintptr(v.m.kvmFd))
	if err != nil {
		return fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	v.run, err = unix.Mmap(v.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap kvm_run: %w", err)
	}
	v.runData = runDataOf(v.run)
	c := vcpuCPUID(cpuid, v.index)
	if err := kvm.SetCPUID2(uintptr(v.fd), c); err != nil {
		return fmt.Errorf("KVM_SET_CPUID2: %w", err)
	}
	v.setCPUID(c)
	return nil
}

func (v *VCPU) destroy() {
	if v.run != nil {
		unix.Munmap(v.run)
		v.run, v.runData = nil, nil
	}
	if v.fd >= 0 {
		unix.Close(v.fd)
		v.fd = -1
	}
}

// do runs fn on the vCPU's thread and returns its error.
// Precondition: the vCPU is parked (the machine is created, paused or
// stopped).
func (v *VCPU) do(fn func() error) error {
	errc := make(chan error, 1)
	select {
	case v.work <- func() { errc <- fn() }:
		return <-errc
	case <-v.done:
		return fmt.Errorf("vCPU %d: thread has exited", v.index)
	}
}

func (v *VCPU) resume() { v.resumeCh <- struct{}{} }

func (v *VCPU) close() {
	select {
	case <-v.done:
	default:
		close(v.quit)
		<-v.done
	}
}

// setImmediateExit sets kvm_run.immediate_exit. The kernel reads it at entry
// to KVM_RUN; the kick that follows (a syscall) orders the store before it.
func (v *VCPU) setImmediateExit(on bool) {
	if on {
		v.runData.ImmediateExit = 1
	} else {
		v.runData.ImmediateExit = 0
	}
}

// kickForPause kicks the vCPU for the pause under way, unless another
// thread has already (Machine.helpKick).
func (v *VCPU) kickForPause() {
	if v.pauseKicked.CompareAndSwap(false, true) {
		v.kick()
	}
}

// kick interrupts the vCPU thread so that KVM_RUN returns EINTR.
func (v *VCPU) kick() {
	if err := unix.Tgkill(unix.Getpid(), v.tid, kickSignal); err != nil && !errors.Is(err, unix.ESRCH) {
		panic(fmt.Sprintf("vCPU %d: kicking thread %d: %v", v.index, v.tid, err))
	}
}

// runUntilParked enters the guest until the machine asks the vCPUs to stop,
// handling exits in between. It parks only after KVM_RUN returned EINTR, so
// every I/O the guest started has completed and its state is consistent.
func (v *VCPU) runUntilParked() {
	defer v.park()
	for {
		if v.m.pic != nil && !v.prepareUserspaceInterrupts() {
			return
		}
		kicked, err := kvmapi.Run(v.fd)
		if err != nil {
			v.m.fail(fmt.Errorf("vCPU %d: %w", v.index, err))
			v.drain()
			return
		}
		if kicked {
			if v.m.pauseReq.Load() {
				v.m.helpKick(v)
				return
			}
			continue
		}
		if err := v.handleExit(); err != nil {
			v.m.fail(fmt.Errorf("vCPU %d: %w", v.index, err))
			v.drain()
			return
		}
	}
}

// park stops the kick timer and counts the vCPU parked; in a pause of
// PauseSaving it then captures the vCPU's state here, on its own thread,
// once every vCPU has parked (and the last to finish assembles the
// machine's, vcpuCaptured).
func (v *VCPU) park() {
	v.stopKickTimer()
	round := v.m.vcpuParked()
	if round == nil {
		return
	}
	v.savedErr = v.capture(v.m.regsByRun)
	if v.savedErr == nil {
		v.savedEncoded = v.appendSaved(v.savedEncoded[:0])
	}
	v.m.vcpuCaptured(round)
}

// drain completes a pending I/O after a failure, so the saved state (for a
// post-mortem) is consistent. Errors are ignored: the machine is already
// failing.
func (v *VCPU) drain() {
	v.setImmediateExit(true)
	kvmapi.Run(v.fd) //nolint:errcheck
}

// handleExit dispatches one KVM exit.
func (v *VCPU) handleExit() error {
	r := v.runData
	data := exitData(r)
	switch kvm.ExitType(r.ExitReason) {
	case kvm.EXITIO:
		dir := data[kvmapi.RunIODirectionOffset]
		size := int(data[kvmapi.RunIOSizeOffset])
		port := binary.LittleEndian.Uint16(data[kvmapi.RunIOPortOffset:])
		count := int(binary.LittleEndian.Uint32(data[kvmapi.RunIOCountOffset:]))
		off := binary.LittleEndian.Uint64(data[kvmapi.RunIODataOffsetOffset:])
		if size != 1 && size != 2 && size != 4 || off+uint64(size*count) > uint64(len(v.run)) {
			return fmt.Errorf("KVM_EXIT_IO: bad access (port %#x, size %d, count %d, offset %d)", port, size, count, off)
		}
		buf := v.run[off : off+uint64(size*count)]
		for i := 0; i < count; i++ {
			v.m.bus.PIO(port, buf[i*size:(i+1)*size], dir == kvmapi.KVM_EXIT_IO_OUT)
		}
		return nil
	case kvm.EXITMMIO:
		// No MMIO devices yet: reads see all ones, writes are dropped.
		if data[kvmapi.RunMMIOIsWriteOffset] == 0 {
			n := binary.LittleEndian.Uint32(data[kvmapi.RunMMIOLenOffset:])
			for i := uint32(0); i < n && i < 8; i++ {
				data[kvmapi.RunMMIODataOffset+int(i)] = 0xff
			}
		}
		return nil
	case kvm.EXITHLT:
		// Only without the in-kernel irqchip: wait for an interrupt.
		v.halted = true
		return nil
	case kvm.EXITIRQWINDOWOPEN:
		// Only without the in-kernel irqchip: the guest can take the
		// interrupt prepareUserspaceInterrupts asked the window for; it
		// injects it before the next entry.
		return nil
	case kvm.EXITSHUTDOWN:
		regs, _ := kvm.GetRegs(uintptr(v.fd))
		return fmt.Errorf("guest shut down (triple fault) at RIP %#x", regs.RIP)
	case kvm.EXITFAILENTRY:
		return fmt.Errorf("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason %#x", r.Data[0])
	case kvm.EXITINTERNALERROR:
		return fmt.Errorf("KVM_EXIT_INTERNAL_ERROR: suberror %d", uint32(r.Data[0]))
	case kvmapi.KVM_EXIT_SYSTEM_EVENT:
		return fmt.Errorf("KVM_EXIT_SYSTEM_EVENT type %d", uint32(r.Data[0]))
	case kvmapi.KVM_EXIT_DIRTY_RING_FULL:
		return v.m.dirtyRingFull(v.index)
	case kvm.EXITINTR:
		return nil
	default:
		return fmt.Errorf("unhandled KVM exit reason %d", r.ExitReason)
	}
}

// setBareMetalEntry puts the vCPU in 64-bit long mode at entry, with its own
// stack, its index in RDI and the boot-info page in RSI.
func (v *VCPU) setBareMetalEntry(entry uint64) error {
	sregs, err := kvm.GetSregs(uintptr(v.fd))
	if err != nil {
		return fmt.Errorf("KVM_GET_SREGS: %w", err)
	}
	code := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: selCode, Typ: 11, Present: 1, DPL: 0, DB: 0, S: 1, L: 1, G: 1}
	dataSeg := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: selData, Typ: 3, Present: 1, DPL: 0, DB: 1, S: 1, L: 0, G: 1}
	sregs.CS = code
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = dataSeg, dataSeg, dataSeg, dataSeg, dataSeg
	sregs.GDT = kvm.Descriptor{Base: GDTGPA, Limit: uint16(8*len(gdtEntries) - 1)}
	sregs.CR3 = PML4GPA
	sregs.CR4 = cr4PAE | cr4OSFXSR | cr4OSXMMEXCPT
	sregs.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0PG
	sregs.EFER = eferLME | eferLMA
	if err := kvm.SetSregs(uintptr(v.fd), sregs); err != nil {
		return fmt.Errorf("KVM_SET_SREGS: %w", err)
	}
	regs := &kvm.Regs{
		RIP: entry, RFLAGS: 0x2,
		RSP: StacksGPA + uint64(v.index+1)*StackSize,
		RDI: uint64(v.index), RSI: BootInfoGPA,
	}
	if err := kvm.SetRegs(uintptr(v.fd), regs); err != nil {
		return fmt.Errorf("KVM_SET_REGS: %w", err)
	}
	if v.m.cfg.IRQChip {
		// Application processors start waiting for INIT/SIPI; a bare-metal
		// guest starts them all at once.
		if err := kvm.SetMPState(uintptr(v.fd), &kvm.MPState{State: kvm.MPStateRunnable}); err != nil {
			return fmt.Errorf("KVM_SET_MP_STATE: %w", err)
		}
	}
	return nil
}
