package sim

import (
	"embed"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The guests' layout: the vector table at IVTBase, the parameters (8-byte
// words named param_NAME, which New overwrites) at ParamsBase, code from
// EntryBase. Each guest's image ends at the page-aligned symbol "end";
// the stack, from the end of RAM down, gets at least StackPages.
const (
	ParamsBase = 0x100
	EntryBase  = 0x1000
	StackPages = 4
)

//go:embed guests/*.asm
var guestSources embed.FS

// guestInfo describes a built-in guest.
type guestInfo struct {
	about string
	// check validates the parameters; need is the RAM the guest needs
	// beyond its image and stack, in bytes.
	check func(p map[string]uint64) (need uint64, err error)
}

var guestTable = map[string]guestInfo{
	"tick": {
		about: "timer interrupts with memory work; a TICK frame and a line every `every` ticks",
		check: func(p map[string]uint64) (uint64, error) {
			switch wp := p["work_pages"]; {
			case p["period_ns"] < TimerMinPeriod || p["period_ns"] > 0xffffffff:
				return 0, fmt.Errorf("period_ns=%d: must be %d to %d", p["period_ns"], TimerMinPeriod, uint32(0xffffffff))
			case p["every"] == 0:
				return 0, fmt.Errorf("every=0: must be at least 1")
			case wp == 0 || wp&(wp-1) != 0 || wp > MaxPages:
				return 0, fmt.Errorf("work_pages=%d: must be a power of two", wp)
			}
			return p["work_pages"] * PageSize, nil
		},
	},
	"kv": {
		about: "a key-value server on the network device, persisting its table to the disk",
		check: func(p map[string]uint64) (uint64, error) {
			if p["persist_every"] == 0 {
				return 0, fmt.Errorf("persist_every=0: must be at least 1")
			}
			return 0, nil
		},
	},
}

// Guests returns the names of the built-in guests, sorted.
func Guests() []string {
	return slices.Sorted(maps.Keys(guestTable))
}

// DescribeGuest returns a line about the guest and its parameters with
// their defaults.
func DescribeGuest(name string) (string, map[string]uint64, error) {
	info, ok := guestTable[name]
	if !ok {
		return "", nil, unknownGuest(name)
	}
	p, err := guestProgram(name)
	if err != nil {
		return "", nil, err
	}
	return info.about, p.defaults, nil
}

// Param sets a guest parameter in New.
type Param struct {
	Name  string
	Value uint64
}

// ParseParams turns textual guest parameters (ftckpt's --param key=value)
// into the software machine's numeric ones, sorted by name.
func ParseParams(params map[string]string) ([]Param, error) {
	var out []Param
	for _, k := range slices.Sorted(maps.Keys(params)) {
		n, err := strconv.ParseUint(params[k], 0, 64)
		if err != nil {
			return nil, fmt.Errorf("--param %s=%s: the software machine's parameters are numbers", k, params[k])
		}
		out = append(out, Param{Name: k, Value: n})
	}
	return out, nil
}

// New builds a machine with memPages pages of RAM running the built-in
// guest (see Guests), with params overriding its defaults. Like
// NewProgram, it does not call env.
func New(guest string, memPages int, env machine.Env, params ...Param) (*Machine, error) {
	info, ok := guestTable[guest]
	if !ok {
		return nil, unknownGuest(guest)
	}
	p, err := guestProgram(guest)
	if err != nil {
		return nil, err
	}
	values := maps.Clone(p.defaults)
	for _, kv := range params {
		if _, ok := values[kv.Name]; !ok {
			return nil, fmt.Errorf("guest %s has no parameter %q (have: %s)", guest, kv.Name, strings.Join(slices.Sorted(maps.Keys(p.defaults)), ", "))
		}
		values[kv.Name] = kv.Value
	}
	extra, err := info.check(values)
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", guest, err)
	}
	need := p.Symbols["end"] + extra + StackPages*PageSize
	if have := uint64(memPages) * PageSize; memPages > 0 && memPages <= MaxPages && have < need {
		return nil, fmt.Errorf("guest %s needs %d pages of RAM with these parameters, not %d", guest, (need+PageSize-1)/PageSize, memPages)
	}
	m, err := NewProgram(p.Program, memPages, env)
	if err != nil {
		return nil, err
	}
	for k, v := range values {
		m.write64(p.Symbols["param_"+k], v)
	}
	clear(m.dirty)
	return m, nil
}

// GuestSymbol returns the address of a label of a built-in guest's
// program, for tests that stop the guest at a given instruction (RunTo).
func GuestSymbol(guest, label string) (uint64, error) {
	if _, ok := guestTable[guest]; !ok {
		return 0, unknownGuest(guest)
	}
	p, err := guestProgram(guest)
	if err != nil {
		return 0, err
	}
	a, ok := p.Symbols[label]
	if !ok {
		return 0, fmt.Errorf("guest %s has no label %q", guest, label)
	}
	return a, nil
}

func unknownGuest(name string) error {
	return fmt.Errorf("unknown guest %q (have: %s)", name, strings.Join(Guests(), ", "))
}

// builtGuest is an assembled guest and its parameters' defaults.
type builtGuest struct {
	*Program
	defaults map[string]uint64
}

var (
	buildOnce sync.Once
	built     map[string]*builtGuest
	buildErr  error
)

// guestProgram assembles every guest once; the programs are never
// modified afterwards.
func guestProgram(name string) (*builtGuest, error) {
	buildOnce.Do(func() {
		built = map[string]*builtGuest{}
		lib, err := guestSources.ReadFile("guests/lib.asm")
		if err != nil {
			buildErr = err
			return
		}
		for g := range guestTable {
			src, err := guestSources.ReadFile("guests/" + g + ".asm")
			if err != nil {
				buildErr = err
				return
			}
			p, err := Assemble(Prelude + string(src) + string(lib) + "\n\t.align PAGE_SIZE\nend:\n")
			if err != nil {
				buildErr = fmt.Errorf("assembling guest %s: %w", g, err)
				return
			}
			b := &builtGuest{Program: p, defaults: map[string]uint64{}}
			for sym, addr := range p.Symbols {
				if k, ok := strings.CutPrefix(sym, "param_"); ok {
					b.defaults[k] = binary.LittleEndian.Uint64(p.Image[addr:])
				}
			}
			built[g] = b
		}
	})
	if buildErr != nil {
		return nil, buildErr
	}
	return built[name], nil
}

// Prelude defines, for programs, the layout, ports and device registers
// as assembler constants. The guests are assembled after it.
var Prelude = func() string {
	var b strings.Builder
	for _, c := range []struct {
		name string
		v    uint64
	}{
		{"PAGE_SIZE", PageSize}, {"IVT_BASE", IVTBase}, {"PARAMS", ParamsBase}, {"ENTRY", EntryBase},
		{"MMIO_BASE", MMIOBase}, {"IRQ_TIMER", IRQTimer}, {"IRQ_NET", IRQNet},
		{"PORT_PIC_PENDING", PortPICPending}, {"PORT_PIC_MASK", PortPICMask}, {"PORT_CONSOLE", PortConsole},
		{"PORT_POWER", PortPower}, {"PORT_CLOCK_LO", PortClockLo}, {"PORT_CLOCK_HI", PortClockHi},
		{"PORT_TIMER", PortTimer}, {"PORT_DISK_ADDR", PortDiskAddr}, {"PORT_DISK_SECTOR", PortDiskSector},
		{"PORT_DISK_COUNT", PortDiskCount}, {"PORT_DISK_CMD", PortDiskCmd},
		{"DISK_SECTOR_SIZE", DiskSectorSize}, {"DISK_READ", DiskRead}, {"DISK_WRITE", DiskWrite}, {"DISK_FLUSH", DiskFlush},
		{"DISK_OK", DiskOK}, {"DISK_BAD_REQUEST", DiskBadRequest},
		{"NET_RX_BASE", NetRxBase}, {"NET_RX_SLOTS", NetRxSlots}, {"NET_RX_HEAD", NetRxHead},
		{"NET_RX_TAIL", NetRxTail}, {"NET_RX_DROPS", NetRxDrops}, {"NET_TX_ADDR", NetTxAddr},
		{"NET_TX_LEN", NetTxLen}, {"NET_TX_SEND", NetTxSend}, {"NET_TX_ERRORS", NetTxErrors},
		{"NET_SLOT_SIZE", NetSlotSize}, {"NET_SLOT_DATA", NetSlotData}, {"NET_ADDR_SIZE", NetAddrSize},
	} {
		fmt.Fprintf(&b, "\t.equ %s, %#x\n", c.name, c.v)
	}
	return b.String()
}()
