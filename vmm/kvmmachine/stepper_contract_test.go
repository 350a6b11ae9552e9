package kvmmachine

import (
	"testing"

	"github.com/ftckpt/ftckpt/vmm"
	"github.com/ftckpt/ftckpt/vmm/machine"
	"github.com/ftckpt/ftckpt/vmm/machine/machinetest"
	"github.com/ftckpt/ftckpt/vmm/sim"
	"github.com/ftckpt/ftckpt/vmm/vmmtest"
)

// TestKVMStepperContract runs machinetest's Stepper contract on
// Stepper, on a guest that computes on the PIT's interrupts and on one
// that serves the network, landing RunTo with hardware breakpoints (where
// this KVM honours them) and by single steps.
func TestKVMStepperContract(t *testing.T) {
	vmmtest.RequireKVM(t)
	for _, c := range []struct {
		name string
		cfg  StepperConfig
	}{
		{"tick", StepperConfig{Guest: "tick", MemSize: 16 << 20, Params: map[string]string{"hz": "2000", "every": "1"}}},
		{"tick/single-step", StepperConfig{Guest: "tick", MemSize: 16 << 20, Params: map[string]string{"hz": "2000", "every": "1"}, SingleStep: true}},
		{"kv", StepperConfig{Guest: "kv", MemSize: 16 << 20, Net: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			open := func(t *testing.T, cfg StepperConfig, env machine.Env) *Stepper {
				t.Helper()
				cfg.Track = trackBitmap
				m, err := NewStepper(cfg, env)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				return m
			}
			state := func(t *testing.T, cfg StepperConfig) []byte {
				t.Helper()
				s, err := open(t, cfg, machinetest.NewEnv()).SaveState()
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			machinetest.RunStepper(t, machinetest.StepperSuite{
				Open:      func(t *testing.T, env machine.Env) machine.Stepper { return open(t, c.cfg, env) },
				Net:       c.cfg.Net,
				StateDiff: vmm.StateDiff,
				Foreign: func(t *testing.T) map[string][]byte {
					more, other := c.cfg, c.cfg
					more.MemSize *= 2
					other.Net, other.DiskSize = !c.cfg.Net, 1<<20
					sm, err := sim.New(c.cfg.Guest, 64, machinetest.NewEnv())
					if err != nil {
						t.Fatal(err)
					}
					simState, err := sm.SaveState()
					if err != nil {
						t.Fatal(err)
					}
					return map[string][]byte{
						"the state of a machine with more RAM":      state(t, more),
						"the state of a machine with other devices": state(t, other),
						"a software machine's state":                simState,
					}
				},
			})
		})
	}
}
