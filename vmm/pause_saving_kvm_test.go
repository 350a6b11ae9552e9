package vmm

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// vcpuSections decodes the vCPU sections of a machine state, with the TSC
// (which moves with host time while paused) zeroed.
func vcpuSections(t *testing.T, state []byte) map[string]*vcpuState {
	t.Helper()
	ms, err := DecodeState(state)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*vcpuState{}
	for id, s := range ms.Sections {
		if !strings.HasPrefix(id, "vcpu/") {
			continue
		}
		v, err := decodeVCPUState(s.Data)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		for j := range v.MSRs {
			if v.MSRs[j].Index == 0x10 {
				v.MSRs[j].Data = 0
			}
		}
		out[id] = v
	}
	return out
}

// TestKVMPauseSavingCapturesThePause: the state the vCPUs capture on their
// threads as a PauseSaving pause begins is the state of that pause (what a
// SaveState later in the pause reads from KVM, but for the TSC), a pause
// saving state resumes and pauses again like any other, and the captured
// state restores into a new machine that runs on correctly.
func TestKVMPauseSavingCapturesThePause(t *testing.T) {
	m, con := newGuestMachine(t, "smp", 4, map[string]string{"iters": "100"})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	con.WaitFor(t, m, regexp.MustCompile(`round 1 OK`))
	for i := 0; i < 100; i++ {
		saving := i%2 == 0
		pause := m.Pause
		if saving {
			pause = m.PauseSaving
		}
		if err := pause(); err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		capturing := m.saving
		m.mu.Unlock()
		if capturing != saving {
			t.Fatalf("pause %d: PauseSaving %v, and the vCPUs capture their state: %v", i, saving, capturing)
		}
		if i%10 == 0 {
			ahead, err := m.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			// The state a vCPU assembled is taken once; a second SaveState
			// in the pause saves the VM and devices again, with the same
			// vCPU captures.
			again, err := m.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			for id, x := range vcpuSections(t, again) {
				xe, _ := encodeVCPUState(x)
				ye, _ := encodeVCPUState(vcpuSections(t, ahead)[id])
				if !bytes.Equal(xe, ye) {
					t.Fatalf("pause %d: a second SaveState gives another %s", i, id)
				}
			}
			m.mu.Lock()
			m.saving = false // ask the vCPU threads again
			m.mu.Unlock()
			asked, err := m.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			a, b := vcpuSections(t, ahead), vcpuSections(t, asked)
			if len(a) != 4 || len(b) != 4 {
				t.Fatalf("pause %d: %d and %d vCPU sections", i, len(a), len(b))
			}
			for id, x := range a {
				y := b[id]
				x.LAPIC, y.LAPIC = y.LAPIC, x.LAPIC // its timer counts down while paused
				xe, _ := encodeVCPUState(x)
				ye, _ := encodeVCPUState(y)
				if !bytes.Equal(xe, ye) {
					t.Fatalf("pause %d (saving %v): %s captured at the pause differs from %s read later in it (RIP %#x, %#x)",
						i, saving, id, id, x.Regs.RIP, y.Regs.RIP)
				}
			}
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	// A pause that saves and is resumed without a SaveState leaves nothing
	// behind; the next restores.
	if err := m.PauseSaving(); err != nil {
		t.Fatal(err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := m.PauseSaving(); err != nil {
		t.Fatal(err)
	}
	state, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	var snap bytes.Buffer
	if err := writeSnapshot(&snap, state, m.mem); err != nil {
		t.Fatal(err)
	}
	m.Close()
	con2 := &vmmtest.Console{}
	r, err := Restore(&snap, Config{Console: con2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	con2.WaitFor(t, r, regexp.MustCompile(`(?s)round \d+ OK.*round \d+ OK`))
	if strings.Contains(con.String()+con2.String(), "VIOLATION") {
		t.Fatalf("invariant broken:\n%s\n--- restored ---\n%s", con.String(), con2.String())
	}
}

// TestKVMCloseDuringPauseSavingCycles closes 4-vCPU machines at moments
// spread over cycles of PauseSaving, SaveState and Resume, as a node that
// crashes mid-checkpoint does: Close returns, the cycles end with the
// machine stopped (never a hang or another error), and when the machine
// says it stopped every vCPU has parked. vCPUs park without the machine's
// mutex: a pause that saw them all parked for a stop before the last of
// them had said so once returned as if paused (in 3-4 runs of this test
// in 10), and the SaveState after it asked vCPU threads that Close ended.
func TestKVMCloseDuringPauseSavingCycles(t *testing.T) {
	const vcpus = 4
	for i := range 100 {
		m, _ := newGuestMachine(t, "smp", vcpus, map[string]string{"iters": "1000000"})
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
		cycles := make(chan error, 1)
		go func() {
			for {
				err := m.PauseSaving()
				if err == nil {
					_, err = m.SaveState()
				}
				if err == nil {
					err = m.Resume()
				}
				if err != nil {
					cycles <- err
					return
				}
			}
		}()
		parkedAtStop := make(chan int32, 1)
		go func() {
			<-m.Stopped()
			parkedAtStop <- m.parked.Load()
		}()
		time.Sleep(time.Duration(i%25) * 40 * time.Microsecond)
		closed := make(chan struct{})
		go func() { m.Close(); close(closed) }()
		vmmtest.Closed(t, fmt.Sprintf("Close %d during the cycles", i), closed)
		if n := vmmtest.Receive(t, "the parked count at the stop", parkedAtStop); n != vcpus {
			t.Fatalf("close %d: the machine stopped with %d of %d vCPUs parked", i, n, vcpus)
		}
		err := vmmtest.Receive(t, "the cycles' end", cycles)
		// "cannot pause: machine stopped: …", "saving state: machine is
		// stopped: …", "cannot resume a machine that is stopped".
		if !strings.Contains(err.Error(), "stopped") {
			t.Fatalf("close %d: the cycles ended with %v", i, err)
		}
	}
}

// TestKVMRegsByRunMatchGets: the registers, special registers and events
// that a parked vCPU reads with one KVM_RUN (readRegsByRun, as a
// PauseSaving capture does where the host can) are what KVM_GET_REGS,
// KVM_GET_SREGS and KVM_GET_VCPU_EVENTS read, at pauses all over the run
// of 4-vCPU guests whose vCPUs compute, write memory or wait halted; and
// the guest runs on correctly after those KVM_RUNs.
func TestKVMRegsByRunMatchGets(t *testing.T) {
	for _, g := range []struct {
		guest  string
		params map[string]string
		done   *regexp.Regexp
	}{
		{"smp", map[string]string{"iters": "100"}, regexp.MustCompile(`round \d+ OK`)},
		{"memtouch", map[string]string{"ws": "64", "dirty": "64", "every": "200"}, regexp.MustCompile(`pass \d+`)},
	} {
		t.Run(g.guest, func(t *testing.T) {
			m, con := newGuestMachine(t, g.guest, 4, g.params)
			if !m.regsByRun {
				t.Skip("this host's KVM has no KVM_CAP_SYNC_REGS for registers, special registers and events: captures use the GETs")
			}
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			con.WaitFor(t, m, g.done)
			for i := 0; i < 40; i++ {
				if err := m.Pause(); err != nil {
					t.Fatal(err)
				}
				for _, v := range m.vcpus {
					err := v.do(func() error {
						if err := v.capture(false); err != nil {
							return err
						}
						gets := v.saved.vcpuStateFixed
						if err := v.capture(true); err != nil {
							return err
						}
						byRun := v.saved.vcpuStateFixed
						switch {
						case byRun.Regs != gets.Regs:
							return fmt.Errorf("registers %+v by KVM_RUN, %+v by KVM_GET_REGS", byRun.Regs, gets.Regs)
						case byRun.Sregs != gets.Sregs:
							return fmt.Errorf("special registers %+v by KVM_RUN, %+v by KVM_GET_SREGS", byRun.Sregs, gets.Sregs)
						case byRun.Events != gets.Events:
							return fmt.Errorf("events %+v by KVM_RUN, %+v by KVM_GET_VCPU_EVENTS", byRun.Events, gets.Events)
						}
						return nil
					})
					if err != nil {
						t.Fatalf("pause %d, vCPU %d: %v", i, v.index, err)
					}
				}
				if err := m.Resume(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Duration(i%5) * time.Millisecond)
			}
			before := len(g.done.FindAllString(con.String(), -1))
			con.WaitFor(t, m, regexp.MustCompile(fmt.Sprintf(`(?s)(%s.*){%d}`, g.done, before+1)))
			if strings.Contains(con.String(), "VIOLATION") {
				t.Fatalf("invariant broken:\n%s", con.String())
			}
		})
	}
}

// TestKVMRecycledStatesAreReused: a state given back with RecycleState is
// the buffer a later pause encodes its state into (so that it needs no
// fresh one), and that state is whole; a state not given back is never
// written again.
func TestKVMRecycledStatesAreReused(t *testing.T) {
	m, _ := newGuestMachine(t, "smp", 2, map[string]string{"iters": "100"})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	save := func() []byte {
		t.Helper()
		if err := m.PauseSaving(); err != nil {
			t.Fatal(err)
		}
		s, err := m.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeState(s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	kept := save()
	keptCopy := bytes.Clone(kept)
	given := save()
	m.RecycleState(given)
	if next := save(); unsafe.SliceData(next) != unsafe.SliceData(given) {
		t.Error("the state after a RecycleState was not encoded into the buffer given back")
	}
	for range 3 {
		if s := save(); unsafe.SliceData(s) == unsafe.SliceData(kept) || unsafe.SliceData(s) == unsafe.SliceData(given) {
			t.Fatal("a state was encoded into a buffer not given back")
		}
	}
	if !bytes.Equal(kept, keptCopy) {
		t.Fatal("a state not given back was written over")
	}
}
