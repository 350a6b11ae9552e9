package bench

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	ckmode "github.com/ftckpt/ftckpt/modes/checkpoint"
	"github.com/ftckpt/ftckpt/modes/node"
)

// Workload is a guest and its parameters; a kv workload also gets a client
// load (KVWindow requests outstanding).
type Workload struct {
	Guest  string
	About  string
	Params map[string]string
	// Memory is the guest's RAM (0: 16 MiB, 1 MiB on the software machine).
	Memory int64
	// NoReplay, if set, says why replay mode cannot run the workload (it
	// runs one vCPU): the plan's replay row is left out for it.
	NoReplay string
}

// KVWindow is the kv load's requests outstanding.
const KVWindow = 8

// DefaultMemtouchPages is memtouch's working set unless told otherwise.
const DefaultMemtouchPages = 1024

// Workloads are the workloads a machine runs, in table order; memtouch (on
// KVM) rewrites memtouchPages pages flat out on writers vCPUs.
func Workloads(m node.Machine, memtouchPages, writers int) []Workload {
	kv := Workload{Guest: "kv", About: fmt.Sprintf("a client keeps %d INCR requests outstanding", KVWindow)}
	if m == node.MachineSim {
		return []Workload{
			{Guest: "tick", About: "timer every 200µs, 5,000 walk steps per tick over 16 pages: never idle",
				Params: map[string]string{"period_ns": "200000", "work": "5000", "every": "5"}},
			kv,
		}
	}
	ws := strconv.Itoa(memtouchPages)
	memtouch := Workload{Guest: "memtouch", About: fmt.Sprintf("writes 16 bytes to each of %d pages per pass, flat out", memtouchPages),
		Params: map[string]string{"ws": ws, "dirty": ws, "every": "1", "writers": strconv.Itoa(writers)},
		// Twice the working set, rounded up to 2 MiB: room for the
		// guest's code and stack beside it.
		Memory: max(16<<20, (int64(memtouchPages)*2*4096+2<<20-1)&^(2<<20-1))}
	if writers > 1 {
		memtouch.About += fmt.Sprintf(", %d vCPUs writing a share each", writers)
		memtouch.NoReplay = fmt.Sprintf("replay runs one vCPU, memtouch's %d writers need %d", writers, writers)
	}
	return []Workload{kv, memtouch}
}

// Config is one way of running a workload.
type Config struct {
	// Mode is "unprotected", "replay" or "checkpoint".
	Mode  string
	Epoch time.Duration
	// Copy is where checkpoint mode copies an epoch's dirty pages
	// (Config.CopyAfterResume; on the software machine always in the
	// pause).
	Copy ckmode.CopyMode
	// Again marks the unprotected run after the others: the floor is the
	// mean of the two, and their difference shows how steady the host was.
	Again bool
}

func (c Config) String() string {
	switch {
	case c.Mode == "checkpoint" && c.Copy == ckmode.CopyNever:
		return "checkpoint " + c.Epoch.String() + ", pause copies"
	case c.Mode == "checkpoint" && c.Copy == ckmode.CopyAlways:
		return "checkpoint " + c.Epoch.String() + ", always after resume"
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

// Request is a bench command line.
type Request struct {
	Machine node.Machine
	// Guest is a workload's name or "all".
	Guest string
	// Epochs are checkpoint mode's, comma-separated.
	Epochs   string
	VCPUs    int
	Duration time.Duration
	// MemtouchPages is memtouch's working set (DefaultMemtouchPages unless
	// told otherwise).
	MemtouchPages int
	// MemtouchWriters is how many of memtouch's vCPUs write, each its share
	// of the working set (1 to VCPUs; 1 unless told otherwise).
	MemtouchWriters int
	// Copy is where checkpoint mode copies dirty pages on KVM, a row for
	// each of a comma-separated list of --copy-after-resume's values (auto,
	// always, never); "": auto,never on KVM, auto on the software machine,
	// which cannot copy after resuming.
	Copy string
}

// NewPlan checks a bench command line.
func NewPlan(r Request) (Plan, error) {
	machine, guest, vcpus, d := r.Machine, r.Guest, r.VCPUs, r.Duration
	p := Plan{Machine: machine, VCPUs: vcpus, Duration: d}
	if r.MemtouchPages < 1 || r.MemtouchPages > 1<<20 || machine == node.MachineSim && r.MemtouchPages != DefaultMemtouchPages {
		return p, fmt.Errorf("--memtouch-pages %d: KVM's memtouch rewrites 1 to 1,048,576 pages (the software machine has no memtouch)", r.MemtouchPages)
	}
	copies, err := copyRows(machine, r.Copy)
	if err != nil {
		return p, err
	}
	var names []string
	for _, w := range Workloads(machine, r.MemtouchPages, r.MemtouchWriters) {
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
	if r.MemtouchWriters < 1 || r.MemtouchWriters > vcpus {
		return p, fmt.Errorf("--memtouch-writers %d: KVM's memtouch writes on 1 to --vcpus (%d) vCPUs (the software machine has no memtouch)", r.MemtouchWriters, vcpus)
	}
	es, err := ParseEpochs(r.Epochs)
	if err != nil {
		return p, err
	}
	p.Configs = []Config{{Mode: "unprotected"}, {Mode: "replay"}}
	for _, e := range es {
		for _, where := range copies {
			p.Configs = append(p.Configs, Config{Mode: "checkpoint", Epoch: e, Copy: where})
		}
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

// copyRows is the Config.Copy of each checkpoint row an epoch gets, for
// Request.Copy.
func copyRows(m node.Machine, list string) ([]ckmode.CopyMode, error) {
	if list == "" {
		list = "auto"
		if m == node.MachineKVM {
			list = "auto,never"
		}
	}
	var modes []ckmode.CopyMode
	for _, item := range strings.Split(list, ",") {
		c, err := ckmode.ParseCopyMode(strings.TrimSpace(item))
		if err != nil {
			return nil, fmt.Errorf("--copy %w", err)
		}
		if c != ckmode.CopyAuto && m != node.MachineKVM {
			return nil, fmt.Errorf("--copy %v: the software machine copies every epoch's pages in the pause; only KVM can copy them after resuming", c)
		}
		if slices.Contains(modes, c) {
			return nil, fmt.Errorf("--copy %q: %v twice", list, c)
		}
		modes = append(modes, c)
	}
	return modes, nil
}
