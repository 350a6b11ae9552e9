package bench

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ftckpt/ftckpt/modes/node"
)

// Workload is a guest and its parameters; a kv workload also gets a client
// load (KVWindow requests outstanding).
type Workload struct {
	Guest  string
	About  string
	Params map[string]string
}

// KVWindow is the kv load's requests outstanding.
const KVWindow = 8

// Workloads are the workloads a machine runs, in table order.
func Workloads(m node.Machine) []Workload {
	kv := Workload{Guest: "kv", About: fmt.Sprintf("a client keeps %d INCR requests outstanding", KVWindow)}
	if m == node.MachineSim {
		return []Workload{
			{Guest: "tick", About: "timer every 200µs, 5,000 walk steps per tick over 16 pages: never idle",
				Params: map[string]string{"period_ns": "200000", "work": "5000", "every": "5"}},
			kv,
		}
	}
	return []Workload{
		kv,
		{Guest: "memtouch", About: "writes 16 bytes to each of 1,024 pages per pass, flat out",
			Params: map[string]string{"ws": "1024", "dirty": "1024", "every": "1"}},
	}
}

// Config is one way of running a workload.
type Config struct {
	// Mode is "unprotected", "replay" or "checkpoint".
	Mode  string
	Epoch time.Duration
	// Again marks the unprotected run after the others: the floor is the
	// mean of the two, and their difference shows how steady the host was.
	Again bool
}

func (c Config) String() string {
	switch {
	case c.Mode == "checkpoint":
		return "checkpoint " + c.Epoch.String()
	case c.Again:
		return c.Mode + ", again"
	}
	return c.Mode
}

// Plan is a checked bench run.
type Plan struct {
	Machine   node.Machine
	VCPUs     int // checkpoint mode's, on KVM
	Workloads []Workload
	Configs   []Config
	Duration  time.Duration
}

// MinDuration is the shortest measured window.
const MinDuration = 100 * time.Millisecond

// NewPlan checks a bench command line: the machine, the guest (a workload's
// name or "all"), the epochs (comma-separated) and the window.
func NewPlan(machine node.Machine, guest, epochs string, vcpus int, d time.Duration) (Plan, error) {
	p := Plan{Machine: machine, VCPUs: vcpus, Duration: d}
	var names []string
	for _, w := range Workloads(machine) {
		names = append(names, w.Guest)
		if guest == w.Guest || guest == "all" {
			p.Workloads = append(p.Workloads, w)
		}
	}
	if len(p.Workloads) == 0 {
		return p, fmt.Errorf("--guest %q: the benchmarks on %s run %s or all", guest, machine, strings.Join(names, ", "))
	}
	if d < MinDuration {
		return p, fmt.Errorf("--duration %v: must be at least %v", d, MinDuration)
	}
	if vcpus < 1 || machine == node.MachineSim && vcpus != 1 {
		return p, fmt.Errorf("--vcpus %d: %s runs 1 to 64 (the software machine 1)", vcpus, machine)
	}
	es, err := ParseEpochs(epochs)
	if err != nil {
		return p, err
	}
	p.Configs = []Config{{Mode: "unprotected"}, {Mode: "replay"}}
	for _, e := range es {
		p.Configs = append(p.Configs, Config{Mode: "checkpoint", Epoch: e})
	}
	p.Configs = append(p.Configs, Config{Mode: "unprotected", Again: true})
	return p, nil
}

// ParseEpochs parses a comma-separated list of checkpoint epochs.
func ParseEpochs(s string) ([]time.Duration, error) {
	var epochs []time.Duration
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		e, err := time.ParseDuration(item)
		if err != nil {
			return nil, fmt.Errorf("--epochs %q: %w", s, err)
		}
		if e <= 0 {
			return nil, fmt.Errorf("--epochs %q: epoch %v must be positive", s, e)
		}
		epochs = append(epochs, e)
	}
	if len(epochs) == 0 {
		return nil, fmt.Errorf("--epochs %q: no epoch given (e.g. 5ms,25ms,100ms)", s)
	}
	return slices.Clip(epochs), nil
}
