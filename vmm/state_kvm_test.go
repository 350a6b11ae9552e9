package vmm

import (
	"bytes"
	"errors"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// timeless decodes a machine state and clears what moves with host time
// while a machine is paused (see StateDiff), so two saves of a paused
// machine compare equal section by section.
func timeless(t *testing.T, state []byte) map[string][]byte {
	t.Helper()
	ts, err := timelessSections(state)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for id, s := range ts.sections {
		out[id] = s.Data
	}
	return out
}

// sameState says how two timeless states differ, or "" if they do not.
func sameState(a, b map[string][]byte) string {
	var diff []string
	for _, id := range slices.Sorted(maps.Keys(a)) {
		if y, ok := b[id]; !ok || !bytes.Equal(a[id], y) {
			diff = append(diff, id)
		}
	}
	for id := range b {
		if _, ok := a[id]; !ok {
			diff = append(diff, id)
		}
	}
	return strings.Join(diff, ", ")
}

// kvStates runs the kv guest with a virtio-net and a virtio-blk device, and
// returns its state and a snapshot of it after one request (SET a 1), the
// disk as it was then, and the machine, its client and console, paused
// after a second request (INCR a) changed the guest and its devices.
func kvStates(t *testing.T) (first []byte, snap *bytes.Buffer, disk []byte, m *Machine, c *net.UDPConn, con *vmmtest.Console) {
	t.Helper()
	d := vmmtest.NewMemDisk(1 << 20)
	m, con, c = runKvOnDisk(t, d, map[string]string{"journal": "1000", "flush": "1"})
	if got := kvAsk(t, c, con, "SET a 1"); got != "1 OK" {
		t.Fatalf("SET a 1: %q", got)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	first, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := DecodeState(first)
	ids := slices.Sorted(maps.Keys(ms.Sections))
	slices.Reverse(ids)
	reversed, err := encodeState(ms, ids)
	if err != nil {
		t.Fatal(err)
	}
	snap = &bytes.Buffer{}
	if err := writeSnapshot(snap, reversed, m.mem); err != nil {
		t.Fatal(err)
	}
	disk = d.Bytes()
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if got := kvAsk(t, c, con, "INCR a"); got != "2 VALUE 2" {
		t.Fatalf("INCR a: %q", got)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	return first, snap, disk, m, c, con
}

// TestKVMStateSectionsInAnyOrder: a snapshot whose machine state lists its
// sections in reverse restores the same machine (every section equal to
// the saved one), and the guest goes on from there: its next request sees
// the value it had, not the later one.
func TestKVMStateSectionsInAnyOrder(t *testing.T) {
	first, snap, disk, _, _, _ := kvStates(t)
	ms, _ := DecodeState(first)
	if len(ms.Sections) < 8 || ms.Sections["virtio-net/0"].Data == nil || ms.Sections["virtio-blk/0"].Data == nil {
		t.Fatalf("the machine saved sections %q, want the VM, a vCPU, the platform, PCI, virtio-net and virtio-blk",
			slices.Sorted(maps.Keys(ms.Sections)))
	}
	front, err := NewUDPFront(UDPFrontConfig{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	var dev *VirtioNet
	con := &vmmtest.Console{}
	r, err := Restore(snap, Config{Console: con}, func(r *Machine) error {
		var err error
		if _, dev, err = r.AttachVirtioNet(NetConfig{Sink: front}); err != nil {
			return err
		}
		restored := vmmtest.NewMemDisk(0)
		restored.SetImage(disk)
		_, _, err = r.AttachVirtioBlk(BlkConfig{Disk: restored})
		return err
	})
	if err != nil {
		t.Fatalf("restoring sections in reverse: %v", err)
	}
	defer r.Close()
	restored, err := r.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if diff := sameState(timeless(t, first), timeless(t, restored)); diff != "" {
		t.Errorf("restored machine differs from the saved one in %s", diff)
	}
	if err := front.Start(dev); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp4", nil, front.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := kvAsk(t, c, con, "GET a"); got != "2 VALUE 1" {
		t.Errorf("GET a on the restored guest: %q, want 2 VALUE 1 (the second request, before INCR)", got)
	}
}

// TestKVMStateRefusedByID: a state without one of the machine's sections,
// with a section no component claims, or with a section twice is refused
// with the ID named, before anything changes: the machine saves what it
// saved before the attempt, and runs on.
func TestKVMStateRefusedByID(t *testing.T) {
	first, _, _, m, c, con := kvStates(t)
	now, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if sameState(timeless(t, first), timeless(t, now)) == "" {
		t.Fatal("the guest and its devices did not change between the saves: the test would prove nothing")
	}
	edit := func(fn func(*MachineState) []string) []byte {
		ms, _ := DecodeState(first)
		ids := fn(ms)
		b, err := encodeState(ms, ids)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, bad := range []struct {
		name  string
		says  []string
		state []byte
	}{
		{"missing", []string{`no section for "virtio-blk/0"`}, edit(func(ms *MachineState) []string {
			delete(ms.Sections, "virtio-blk/0")
			return slices.Sorted(maps.Keys(ms.Sections))
		})},
		{"unknown", []string{`no component of this machine is "virtio-net/1"`}, edit(func(ms *MachineState) []string {
			ms.Sections["virtio-net/1"] = ms.Sections["virtio-net/0"]
			return slices.Sorted(maps.Keys(ms.Sections))
		})},
		{"duplicated", []string{`"virtio-net/0" appears twice`}, edit(func(ms *MachineState) []string {
			return append(slices.Sorted(maps.Keys(ms.Sections)), "virtio-net/0")
		})},
		{"renamed", []string{`no section for "serial/com1"`, `no component of this machine is "serial/com2"`}, edit(func(ms *MachineState) []string {
			ms.Sections["serial/com2"] = ms.Sections["serial/com1"]
			delete(ms.Sections, "serial/com1")
			return slices.Sorted(maps.Keys(ms.Sections))
		})},
	} {
		err := m.RestoreState(bad.state)
		if !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: %v, want ErrMismatch", bad.name, err)
		}
		for _, says := range bad.says {
			if err != nil && !strings.Contains(err.Error(), says) {
				t.Errorf("%s: %q does not say %s", bad.name, err, says)
			}
		}
		after, err := m.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		if diff := sameState(timeless(t, now), timeless(t, after)); diff != "" {
			t.Errorf("%s: a refused state changed %s", bad.name, diff)
		}
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if got := kvAsk(t, c, con, "GET a"); got != "3 VALUE 2" {
		t.Errorf("GET a after the refused restores: %q, want 3 VALUE 2", got)
	}
}
