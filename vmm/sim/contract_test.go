package sim

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/machine/machinetest"
)

// contractGuests are the guests the contract runs on: one that computes
// on a timer, one that serves the network.
var contractGuests = []struct {
	guest string
	net   bool
}{
	{"tick", false},
	{"kv", true},
}

const contractPages = 64

// TestStepperContract runs machinetest's Stepper contract on the software
// machine.
func TestStepperContract(t *testing.T) {
	for _, c := range contractGuests {
		t.Run(c.guest, func(t *testing.T) {
			machinetest.RunStepper(t, machinetest.StepperSuite{
				Open: func(t *testing.T, env machine.Env) machine.Stepper {
					m, err := New(c.guest, contractPages, env)
					if err != nil {
						t.Fatal(err)
					}
					return m
				},
				Net: c.net,
				Foreign: func(t *testing.T) map[string][]byte {
					return map[string][]byte{
						"a machine's state with more RAM": stepperState(t, c.guest, 2*contractPages),
						"a CheckpointGuest's state":       runnerState(t, c.guest, contractPages),
					}
				},
			})
		})
	}
}

// TestRunnerContract runs machinetest's Runner contract on the software
// machine run freely (CheckpointGuest).
func TestRunnerContract(t *testing.T) {
	for _, c := range contractGuests {
		t.Run(c.guest, func(t *testing.T) {
			machinetest.RunRunner(t, machinetest.RunnerSuite{
				Open: func(t *testing.T) machinetest.Runner {
					g, err := NewCheckpointGuest(c.guest, contractPages, newCKDevices())
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(g.Close)
					r := machinetest.Runner{Runner: g}
					if c.net {
						r.Receive = func(f []byte) { g.Receive(f) }
					}
					return r
				},
				Foreign: func(t *testing.T) map[string][]byte {
					return map[string][]byte{
						"a CheckpointGuest's state with more RAM": runnerState(t, c.guest, 2*contractPages),
						"a machine's state":                       stepperState(t, c.guest, contractPages),
					}
				},
				StateDiff: ckStateDiff,
			})
		})
	}
}

// stepperState is the state of a fresh Machine running guest on pages
// pages of RAM.
func stepperState(t *testing.T, guest string, pages int) []byte {
	t.Helper()
	m, err := New(guest, pages, machinetest.NewEnv())
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runnerState is the state of a fresh CheckpointGuest running guest on
// pages pages of RAM.
func runnerState(t *testing.T, guest string, pages int) []byte {
	t.Helper()
	g, err := NewCheckpointGuest(guest, pages, newCKDevices())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	s, err := g.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ckStateDiff compares two CheckpointGuest states leaving out guest time,
// which moves with host time while the guest is paused or not yet started
// (as vmm.StateDiff leaves out the KVM clock), and the checksum over it.
func ckStateDiff(a, b []byte) (string, error) {
	if len(a) != ckStateSize || len(b) != ckStateSize {
		return fmt.Sprintf("%d and %d bytes, want %d", len(a), len(b), ckStateSize), nil
	}
	clock := len(ckStateMagic) + 2
	if !bytes.Equal(a[:clock], b[:clock]) || !bytes.Equal(a[clock+8:len(a)-4], b[clock+8:len(b)-4]) {
		return "they differ beyond guest time", nil
	}
	return "", nil
}
