package sim

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"testing"
	"time"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// busyMachine returns a kv machine stopped in the middle of things: the
// network configured, a request being handled, an access pending.
func busyMachine(t testing.TB) *Machine {
	t.Helper()
	r := newRig(t, "kv", 64)
	r.rx = [][]byte{KVRequest("SET", "a", "1"), KVRequest("INCR", "a")}
	if err := r.runUntil(10000, func() bool { return len(r.env.frames) == 1 }); err != nil {
		t.Fatal(err)
	}
	r.m.PollTimers(0)
	e, err := r.m.Run()
	if err != nil || !e.Kind.IsIO() {
		t.Fatalf("%v %v", e, err)
	}
	r.m.dev.Timer = timer{Period: TimerMinPeriod, Deadline: 12345}
	r.m.cpu.WindowReq = true
	return r.m
}

func TestStateRoundTrip(t *testing.T) {
	a := busyMachine(t)
	st, err := a.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	b := newRig(t, "tick", 64).m
	copy(b.Memory(), a.Memory())
	if err := b.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	st2, _ := b.SaveState()
	if !bytes.Equal(st, st2) {
		t.Fatalf("save, restore, save: different bytes")
	}
	if a.cpu != b.cpu || a.dev != b.dev {
		t.Fatalf("restored\n%+v %+v\nsaved\n%+v %+v", b.cpu, b.dev, a.cpu, a.dev)
	}
	// Both complete the pending access and go on identically (from a
	// common Mark, as RestoreState starts one).
	a.Mark()
	for _, m := range []*Machine{a, b} {
		e := m.cpu.Pend.exit(m.cpu.PC)
		if err := m.Complete(&e); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Run(); err != nil {
			t.Fatal(err)
		}
	}
	sameMachines(t, "after a restore", a, b)
}

func TestRestoreStartsAMarkInterval(t *testing.T) {
	m := busyMachine(t)
	st, _ := m.SaveState()
	const empty = hashOffset // nothing dirty
	if sig, _ := m.Signature(); sig.Dirty == empty {
		t.Fatal("no dirty pages to begin with")
	}
	if err := m.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if sig, _ := m.Signature(); sig.Dirty != empty {
		t.Fatal("RestoreState kept the dirty pages")
	}
}

// reframe recomputes the checksum of a state so that a change to its body
// reaches the field checks.
func reframe(st []byte) []byte {
	st = bytes.Clone(st)
	if len(st) >= 4 {
		binary.LittleEndian.PutUint32(st[len(st)-4:], crc32.Checksum(st[:len(st)-4], castagnoli))
	}
	return st
}

func TestRestoreRejects(t *testing.T) {
	m := busyMachine(t)
	good, _ := m.SaveState()
	before := bytes.Clone(good)
	check := func(what string, st []byte) {
		t.Helper()
		if err := m.RestoreState(st); err == nil {
			t.Errorf("%s: accepted", what)
		} else if testing.Verbose() {
			t.Logf("%s: %v", what, err)
		}
		if now, _ := m.SaveState(); !bytes.Equal(now, before) {
			t.Fatalf("%s: a rejected state changed the machine", what)
		}
	}
	check("nil", nil)
	check("magic", append([]byte("SIMW"), good[4:]...))
	v2 := bytes.Clone(good)
	v2[4] = 2
	check("version 2", reframe(v2))
	check("one byte short", good[:len(good)-1])
	check("one byte more", append(bytes.Clone(good), 0))
	for i := range good {
		for bit := range 8 {
			bad := bytes.Clone(good)
			bad[i] ^= 1 << bit
			if err := m.RestoreState(bad); err == nil {
				t.Fatalf("byte %d bit %d flipped: accepted", i, bit)
			}
		}
	}
	small := newRig(t, "kv", 40).m
	if err := small.RestoreState(good); err == nil {
		t.Error("a state of 64 pages restored into 40")
	}
	// Fields SaveState cannot produce, with a valid checksum.
	for what, mutate := range map[string]func(s *savedState){
		"unknown flags":             func(s *savedState) { s.Flags |= 1 << 20 },
		"unknown vCPU bits":         func(s *savedState) { s.CPUBits |= 1 << 6 },
		"off status while on":       func(s *savedState) { s.OffStatus = 3 },
		"off with an access":        func(s *savedState) { s.CPUBits |= cpuOff },
		"halted with an access":     func(s *savedState) { s.CPUBits |= cpuHalted },
		"timer deadline, stopped":   func(s *savedState) { s.Timer = timer{Deadline: 5} },
		"timer period too short":    func(s *savedState) { s.Timer.Period = 1 },
		"disk status 7":             func(s *savedState) { s.Disk.Status = 7 },
		"too many slots":            func(s *savedState) { s.Net.RxSlots = NetMaxSlots + 1 },
		"access kind halt":          func(s *savedState) { s.PendKind = uint8(machine.ExitHalt) },
		"access kind 200":           func(s *savedState) { s.PendKind = 200 },
		"PIO of 8 bytes":            func(s *savedState) { *s = withPend(s, machine.ExitPIORead, 0x20, 8, 1, 0) },
		"access of 3 bytes":         func(s *savedState) { *s = withPend(s, machine.ExitMMIORead, MMIOBase, 3, 1, 0) },
		"port above 0xffff":         func(s *savedState) { *s = withPend(s, machine.ExitPIOWrite, 0x10000, 1, 0, 0) },
		"MMIO inside RAM":           func(s *savedState) { *s = withPend(s, machine.ExitMMIOWrite, 0x1000, 4, 0, 0) },
		"read into r16":             func(s *savedState) { *s = withPend(s, machine.ExitPIORead, 0x20, 1, 16, 0) },
		"read with data":            func(s *savedState) { *s = withPend(s, machine.ExitPIORead, 0x20, 1, 1, 9) },
		"write wider than its size": func(s *savedState) { *s = withPend(s, machine.ExitPIOWrite, 0x20, 1, 0, 0x100) },
		"write with a register":     func(s *savedState) { *s = withPend(s, machine.ExitPIOWrite, 0x20, 1, 2, 0) },
		"no access, but its size":   func(s *savedState) { *s = withPend(s, 0, 0, 4, 0, 0) },
	} {
		s := m.saved()
		mutate(&s)
		check(what, s.encode())
	}
	// And the unmutated re-encoding is accepted: the cases above failed
	// for their field, not for the encoding.
	s := m.saved()
	if err := m.RestoreState(s.encode()); err != nil {
		t.Fatal(err)
	}
}

func withPend(s *savedState, kind machine.ExitKind, addr uint64, size, reg uint8, data uint64) savedState {
	c := *s
	c.PendKind, c.PendAddr, c.PendSize, c.PendReg, c.PendData = uint8(kind), addr, size, reg, data
	return c
}

func FuzzRestoreState(f *testing.F) {
	m := busyMachine(f)
	st, _ := m.SaveState()
	f.Add(st)
	m.cpu.Pend = access{}
	m.cpu.Halted = true
	st, _ = m.SaveState()
	f.Add(st)
	f.Add([]byte("SIMV\x01\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		data = reframe(data)
		m := newRig(t, "kv", 64).m
		if err := m.RestoreState(data); err != nil {
			return
		}
		again, _ := m.SaveState()
		if !bytes.Equal(again, data) {
			t.Fatalf("accepted a state that saves differently:\n% x\n% x", data, again)
		}
		// Whatever was accepted runs without breaking the machine.
		m.InjectPending()
		m.Signature()
		if m.cpu.Pend.Kind != 0 {
			e := m.cpu.Pend.exit(m.cpu.PC)
			m.Complete(&e)
		}
		stop := time.AfterFunc(time.Millisecond, m.Kick)
		defer stop.Stop()
		if !m.Halted() {
			m.Run()
		}
	})
}
