package machinetest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// PageSize is the page of Memory and Harvest, the same on every machine.
const PageSize = 4096

// StateDiff says how two states of a machine differ ("" if they describe
// the same machine at the same point); see vmm.StateDiff. A nil StateDiff
// compares bytes: the machine's SaveState is then the same on every call
// while it does not run.
type StateDiff func(a, b []byte) (string, error)

// diff is d, or a comparison of bytes if d is nil.
func (d StateDiff) diff(a, b []byte) (string, error) {
	if d != nil {
		return d(a, b)
	}
	if bytes.Equal(a, b) {
		return "", nil
	}
	return fmt.Sprintf("%d and %d bytes, not the same", len(a), len(b)), nil
}

// same fails the test if the states a and b differ.
func (d StateDiff) same(t *testing.T, a, b []byte, format string, args ...any) {
	t.Helper()
	diff, err := d.diff(a, b)
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
	if diff != "" {
		t.Fatalf("%s: %s", fmt.Sprintf(format, args...), diff)
	}
}

// Foreign names states a machine under test must refuse: another kind of
// machine's, or its own kind's built otherwise (another memory size,
// other devices). It may return nil.
type Foreign func(t *testing.T) map[string][]byte

// checkMemory checks what Memory promises: whole pages, and the same slice
// on every call.
func checkMemory(t *testing.T, m machine.Machine) {
	t.Helper()
	mem := m.Memory()
	if len(mem) == 0 || len(mem)%PageSize != 0 {
		t.Fatalf("Memory() is %d bytes: not a whole number of %d-byte pages", len(mem), PageSize)
	}
	again := m.Memory()
	if len(again) != len(mem) || &again[0] != &mem[0] {
		t.Fatal("Memory() returned another slice on a second call: it must be stable for the machine's life")
	}
}

// pages is the number of pages of m's memory.
func pages(m machine.Machine) uint64 { return uint64(len(m.Memory()) / PageSize) }

// tracker follows a machine's memory from harvest to harvest: it keeps a
// copy of memory as of the last harvest and checks that the next one
// reports every page whose contents changed since. (A page written with
// the bytes it held cannot be seen this way; the rest is the contract's
// whole point: a changed page not reported is a backup silently
// corrupted.)
type tracker struct {
	m    machine.Machine
	snap []byte
	// changed counts the pages seen changed and reported, over all checks;
	// reported the pages the last check's Harvest reported.
	changed, reported int
}

// newTracker harvests what m holds so far (a new interval starts) and
// copies its memory. Precondition: the guest does not run.
func newTracker(t *testing.T, m machine.Machine) *tracker {
	t.Helper()
	if err := m.Harvest(machine.NewBitmap(pages(m))); err != nil {
		t.Fatalf("first Harvest: %v", err)
	}
	return &tracker{m: m, snap: bytes.Clone(m.Memory())}
}

// check harvests and fails the test for every page whose contents changed
// since the last harvest and that it does not report; it returns the
// pages that changed. Precondition: the guest does not run.
func (tr *tracker) check(t *testing.T, what string) []uint64 {
	t.Helper()
	got := machine.NewBitmap(pages(tr.m))
	if err := tr.m.Harvest(got); err != nil {
		t.Fatalf("%s: Harvest: %v", what, err)
	}
	mem := tr.m.Memory()
	var changed, missed []uint64
	for p := uint64(0); p < got.Len(); p++ {
		a, b := mem[p*PageSize:(p+1)*PageSize], tr.snap[p*PageSize:(p+1)*PageSize]
		if bytes.Equal(a, b) {
			continue
		}
		changed = append(changed, p)
		if !got.Has(p) {
			missed = append(missed, p)
		}
		copy(b, a)
	}
	if len(missed) > 0 {
		t.Fatalf("%s: %d of the %d pages that changed since the last Harvest are not reported: %v", what, len(missed), len(changed), head(missed))
	}
	tr.changed += len(changed)
	tr.reported = got.Count()
	return changed
}

func head(p []uint64) string {
	if len(p) > 10 {
		return fmt.Sprintf("%v and %d more", p[:10], len(p)-10)
	}
	return fmt.Sprint(p)
}

// frame is the idx-th test frame: Ethernet, broadcast, from a locally
// administered address, of an experimental EtherType (0x88b5, which no
// guest answers), with a payload unique to idx. Payload is what a device
// writes into guest memory when it delivers the frame.
func frame(idx int) (f, payload []byte) {
	r := rand.New(rand.NewSource(int64(idx) + 1))
	payload = make([]byte, 64)
	r.Read(payload)
	binary.LittleEndian.PutUint32(payload, uint32(idx))
	f = append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5}, payload...)
	return f, payload
}

// holds reports whether some page of changed, with the page after it,
// holds payload: the device wrote the frame there.
func holds(mem []byte, changed []uint64, payload []byte) bool {
	for _, p := range changed {
		end := min(uint64(len(mem)), (p+2)*PageSize)
		if bytes.Contains(mem[p*PageSize:end], payload) {
			return true
		}
	}
	return false
}

// checkRefuses restores into m each bad state (corruptions of good, and
// foreign) and fails the test if one is accepted or if a refusal changed
// m: its state must still be good and its memory what it was.
// Precondition: m holds good and does not run.
func checkRefuses(t *testing.T, m machine.Machine, good []byte, foreign map[string][]byte, same StateDiff) {
	t.Helper()
	mem := bytes.Clone(m.Memory())
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x10
		return b
	}
	bad := map[string][]byte{
		"nothing":                   nil,
		"an empty state":            {},
		"the first 4 bytes":         good[:min(4, len(good))],
		"half of it":                good[:len(good)/2],
		"all but its last byte":     good[:len(good)-1],
		"a byte more":               append(bytes.Clone(good), 0),
		"twice the state":           append(bytes.Clone(good), good...),
		"a bit flipped in its head": flip(0),
		"a bit flipped in its body": flip(len(good) / 2),
		"a bit flipped in its tail": flip(len(good) - 1),
	}
	for name, s := range foreign {
		bad[name] = s
	}
	for _, name := range slices.Sorted(maps.Keys(bad)) {
		if err := m.RestoreState(bad[name]); err == nil {
			t.Errorf("RestoreState accepted %s (%d bytes)", name, len(bad[name]))
		}
		now, err := m.SaveState()
		if err != nil {
			t.Fatalf("SaveState after refusing %s: %v", name, err)
		}
		switch diff, err := same.diff(now, good); {
		case err != nil:
			t.Errorf("comparing the state after refusing %s: %v", name, err)
		case diff != "":
			t.Errorf("refusing %s changed the machine's state: %s", name, diff)
		}
		if !bytes.Equal(m.Memory(), mem) {
			t.Fatalf("refusing %s changed the machine's memory", name)
		}
	}
}

// restoreInto loads memory and state into m, a fresh machine, and checks
// that it then holds exactly them.
func restoreInto(t *testing.T, m machine.Machine, mem, state []byte, same StateDiff) {
	t.Helper()
	if len(m.Memory()) != len(mem) {
		t.Fatalf("a fresh machine of the same configuration has %d bytes of memory, the saved one %d", len(m.Memory()), len(mem))
	}
	copy(m.Memory(), mem)
	if err := m.RestoreState(state); err != nil {
		t.Fatalf("RestoreState of a state SaveState produced, into a machine built the same way: %v", err)
	}
	if !bytes.Equal(m.Memory(), mem) {
		t.Fatal("RestoreState changed memory")
	}
	again, err := m.SaveState()
	if err != nil {
		t.Fatalf("SaveState after RestoreState: %v", err)
	}
	same.same(t, again, state, "SaveState after RestoreState differs from the state restored")
}
