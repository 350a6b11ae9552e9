package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/kvmapi"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// newDeviceStepper is a Stepper over a machine with the platform devices
// and a fake kvm_run, but no KVM: enough for everything a Stepper does
// without an ioctl (Complete, the checks, the time source).
func newDeviceStepper(t *testing.T) (*Stepper, *vmmtest.Console) {
	t.Helper()
	con := &vmmtest.Console{}
	m := &Machine{cfg: Config{VCPUs: 1, MemSize: MinMemory, Console: con}, kvmFd: -1, vmFd: -1, state: stateCreated, stopped: make(chan struct{})}
	m.haltCond = sync.NewCond(&m.haltMu)
	if err := m.addDevices(); err != nil {
		t.Fatal(err)
	}
	v := &VCPU{m: m, run: make([]byte, fakeRunSize)}
	m.vcpus = []*VCPU{v}
	s := &Stepper{m: m, v: v}
	s.kick.word = runWord(v.run)
	return s, con
}

// pio makes s's pending exit a port access, as Enter would.
func pio(s *Stepper, write bool, port uint16, size uint8, v uint32) StepExit {
	e := StepExit{Reason: StepPIO, Write: write, Addr: uint64(port), Size: size, dataOff: 4096}
	binary.LittleEndian.PutUint32(e.Data[:4], v)
	if !write {
		e.Data = [8]byte{}
	}
	s.pending, s.hasPending = e, true
	return e
}

func TestNewStepperRefusesWithoutKVM(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{VCPUs: 1, MemSize: MinMemory, IRQChip: true}, "IRQChip must be false"},
		{Config{VCPUs: 2, MemSize: MinMemory}, "1 vCPU, not 2"},
	} {
		if _, err := NewStepper(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

func TestStepperCompletePIO(t *testing.T) {
	s, con := newDeviceStepper(t)
	var calls int
	s.SetTimeSource(func() uint64 { calls++; return 0x1_2345_6789 })

	e := pio(s, true, PortCOM1, 1, 'h')
	if err := s.Complete(&e); err != nil {
		t.Fatal(err)
	}
	if con.String() != "h" || !s.completing {
		t.Fatalf("console %q, completing %v: the OUT did not reach the UART or the vCPU is not waiting to apply it", con.String(), s.completing)
	}
	if calls != 0 {
		t.Fatalf("an OUT to the UART read the time %d times", calls)
	}
	// IN from the clock: the time source is read now, once, and the low
	// half lands both in e.Data and where KVM takes it.
	e = pio(s, false, PortClockLo, 4, 0)
	if err := s.Complete(&e); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint32(e.Data[:]); got != 0x2345_6789 || calls != 1 {
		t.Fatalf("clock read %#x after %d time reads", got, calls)
	}
	if got := binary.LittleEndian.Uint32(s.v.run[4096:]); got != 0x2345_6789 {
		t.Fatalf("kvm_run's I/O page holds %#x", got)
	}
	// Saving reads no time: it uses the last answer.
	st, err := s.m.clock.SaveState()
	if err != nil || calls != 1 {
		t.Fatalf("clock SaveState: %v, %d time reads", err, calls)
	}
	var cs clockState
	if err := decodePlain(st, &cs); err != nil || cs.Now != 0x1_2345_6789 {
		t.Fatalf("saved clock %+v, %v", cs, err)
	}
	// The PIT counts in the same time: arming it reads the source.
	for _, b := range []byte{0x34, 0x9c, 0x2e} { // mode 2, lo/hi, 11932: 100 Hz
		port := uint16(0x40)
		if b == 0x34 {
			port = 0x43
		}
		e = pio(s, true, port, 1, uint32(b))
		if err := s.Complete(&e); err != nil {
			t.Fatal(err)
		}
	}
	if d, ok := s.TimerDeadline(); !ok || d != 0x1_2345_6789+uint64(11932)*1_000_000_000/pitHz {
		t.Fatalf("PIT deadline %d, %v", d, ok)
	}
}

func TestStepperCompleteChecks(t *testing.T) {
	s, _ := newDeviceStepper(t)
	e := StepExit{Reason: StepPIO, Addr: PortCOM1, Size: 1}
	if err := s.Complete(&e); err == nil || !strings.Contains(err.Error(), "no exit awaits completion") {
		t.Fatalf("completing nothing: %v", err)
	}
	pio(s, false, PortCOM1+5, 1, 0)
	for _, wrong := range []StepExit{
		{Reason: StepPIO, Addr: PortCOM1 + 5, Size: 2},
		{Reason: StepPIO, Addr: PortCOM1, Size: 1},
		{Reason: StepPIO, Write: true, Addr: PortCOM1 + 5, Size: 1},
		{Reason: StepMMIO, Addr: PortCOM1 + 5, Size: 1},
	} {
		if err := s.Complete(&wrong); err == nil || !strings.Contains(err.Error(), "awaiting completion is") {
			t.Errorf("completing %v: %v", wrong, err)
		}
	}
	// Enter refuses to run over the exit, a halted guest, and a breakpoint
	// with a single step, before touching the vCPU.
	if _, err := s.Enter(Debug{}); err == nil || !strings.Contains(err.Error(), "was not completed") {
		t.Fatalf("Enter over a pending exit: %v", err)
	}
	if _, err := s.SaveState(); err == nil || !strings.Contains(err.Error(), "was not completed") {
		t.Fatalf("SaveState over a pending exit: %v", err)
	}
	s.hasPending = false
	s.v.halted = true
	if _, err := s.Enter(Debug{}); err == nil || !strings.Contains(err.Error(), "halted") {
		t.Fatalf("Enter while halted: %v", err)
	}
	s.v.halted = false
	if _, err := s.Enter(Debug{Break: true, SingleStep: true}); err == nil || !strings.Contains(err.Error(), "RF") {
		t.Fatalf("Enter with a breakpoint and a step: %v", err)
	}
}

func TestStepperCompleteMMIO(t *testing.T) {
	s, _ := newDeviceStepper(t)
	e := StepExit{Reason: StepMMIO, Addr: 0xfee00030, Size: 4}
	s.pending, s.hasPending = e, true
	if err := s.Complete(&e); err != nil {
		t.Fatal(err)
	}
	want := [8]byte{0xff, 0xff, 0xff, 0xff}
	got := s.v.run[kvmapi.RunExitUnionOffset+kvmapi.RunMMIODataOffset:][:8]
	if e.Data != want || string(got) != string(want[:]) {
		t.Fatalf("MMIO read: e.Data % x, kvm_run % x; want all ones in 4 bytes", e.Data, got)
	}
}

func TestStepperPowerOffAndExclusion(t *testing.T) {
	s, _ := newDeviceStepper(t)
	e := pio(s, true, PortPower, 1, 7)
	err := s.Complete(&e)
	if !errors.Is(err, ErrPoweredOff) || !strings.Contains(err.Error(), "status 7") {
		t.Fatalf("power-off: %v", err)
	}
	if _, err := s.Enter(Debug{}); !errors.Is(err, ErrPoweredOff) {
		t.Fatalf("Enter after power-off: %v", err)
	}
	if _, err := s.Inject(); !errors.Is(err, ErrPoweredOff) {
		t.Fatalf("Inject after power-off: %v", err)
	}

	s, _ = newDeviceStepper(t)
	s.m.state = stateRunning // what Start would have done
	if _, err := s.Enter(Debug{}); err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Fatalf("Enter on a started machine: %v", err)
	}
	if err := s.RestoreState(nil); err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Fatalf("RestoreState on a started machine: %v", err)
	}
}

func TestStepComponentRoundTrip(t *testing.T) {
	for _, on := range []bool{false, true} {
		var w1, w2 uint32 = immediateExitOn, 0
		a, b := &Stepper{}, &Stepper{}
		a.kick.word, b.kick.word = &w1, &w2
		a.setWindow(on)
		data, err := stepComponent{a}.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		if err := (stepComponent{b}).RestoreState(1, data); err != nil {
			t.Fatal(err)
		}
		if b.kick.window() != on || w2&immediateExitBit != 0 {
			t.Fatalf("window %v restored as word %#x", on, w2)
		}
		// A machine that does not ask for windows (a replay backup's)
		// keeps what was wanted in its state, and asks KVM for nothing
		// until it asks again.
		var w3 uint32
		c := &Stepper{}
		c.kick.word = &w3
		c.AskWindows(false)
		if err := (stepComponent{c}).RestoreState(1, data); err != nil {
			t.Fatal(err)
		}
		again, err := stepComponent{c}.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		if c.kick.window() || !bytes.Equal(again, data) {
			t.Fatalf("window %v restored without asking: word %#x, state %x, saved %x", on, w3, again, data)
		}
		c.AskWindows(true)
		if c.kick.window() != on {
			t.Fatalf("window %v: asking again left word %#x", on, w3)
		}
	}
	var w uint32
	c := stepComponent{&Stepper{kick: kickState{word: &w}}}
	if err := c.RestoreState(2, []byte{0}); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: %v", err)
	}
	if err := c.RestoreState(1, []byte{0, 0}); !errors.Is(err, ErrTruncated) {
		t.Errorf("2 bytes: %v", err)
	}
	if err := c.RestoreState(1, []byte{2}); !errors.Is(err, ErrMismatch) {
		t.Errorf("window 2: %v", err)
	}
}
