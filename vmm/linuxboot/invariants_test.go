package linuxboot

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// checkLoaded verifies, from the boot protocol's rules and independently of how Load
// chose, everything a successful Load promises.
func checkLoaded(t *testing.T, cfg Config, e Entry, m *recordMem) {
	t.Helper()
	h, err := ParseHeader(cfg.Kernel)
	if err != nil {
		t.Fatalf("Load accepted a kernel ParseHeader rejects: %v", err)
	}
	table, err := BuildE820(cfg.MemSize, cfg.PCIHoleStart, cfg.Reserved)
	if err != nil || !slices.Equal(table, e.E820) || ValidateE820(e.E820) != nil {
		t.Fatalf("Entry.E820 %v, BuildE820 %v (%v)", e.E820, table, err)
	}
	var ram []E820Entry
	for _, r := range e.E820 {
		if r.Type == E820RAM {
			ram = append(ram, r)
		}
	}
	inRAM := func(s span) bool { return s.end > s.start && s.containedIn(ram) }
	above4G := h.XLoadFlags&XLFCanBeLoadedAbove4G != 0
	pmLen := uint64(len(cfg.Kernel) - h.SetupSize)

	// Kernel.
	kernel := span{e.KernelAddr, e.KernelAddr + e.KernelSpan}
	if e.KernelSpan != max(uint64(h.InitSize), pmLen) || e.KernelAddr < 1<<20 || !inRAM(kernel) {
		t.Fatalf("kernel [0x%x, 0x%x) (init_size 0x%x, image 0x%x) not wholly in RAM from 1 MiB", kernel.start, kernel.end, h.InitSize, pmLen)
	}
	if kernel.end > 1<<32 {
		t.Fatalf("kernel ends at 0x%x, above 4 GiB: the first 4 GiB no longer suffice to map it", kernel.end)
	}
	if h.RelocatableKernel != 0 && e.KernelAddr%uint64(h.KernelAlignment) != 0 {
		t.Fatalf("relocatable kernel at 0x%x, not aligned to 0x%x", e.KernelAddr, h.KernelAlignment)
	}
	if pref := max(h.PrefAddress, 1<<20); h.RelocatableKernel == 0 && e.KernelAddr != pref {
		t.Fatalf("non-relocatable kernel at 0x%x, pref_address 0x%x", e.KernelAddr, pref)
	}
	if e.RIP != e.KernelAddr+0x200 || e.RSI != 0x7000 || e.GDTBase != 0x500 || e.GDTLimit != 31 {
		t.Fatalf("entry RIP 0x%x RSI 0x%x GDT 0x%x/%d", e.RIP, e.RSI, e.GDTBase, e.GDTLimit)
	}

	// Initrd.
	size := uint64(len(cfg.Initrd))
	initrd := span{e.InitrdAddr, e.InitrdAddr + size}
	if size > 0 {
		if e.InitrdAddr%4096 != 0 || e.InitrdAddr < 1<<20 || !inRAM(initrd) || initrd.overlaps(kernel) {
			t.Fatalf("initrd [0x%x, 0x%x): unaligned, low, outside RAM or over the kernel [0x%x, 0x%x)", initrd.start, initrd.end, kernel.start, kernel.end)
		}
		lim := min(uint64(h.InitrdAddrMax)+1, 1<<32)
		limit := lim
		if initrd.end > lim {
			if !above4G {
				t.Fatalf("initrd ends at 0x%x past 0x%x without XLF_CAN_BE_LOADED_ABOVE_4G", initrd.end, lim)
			}
			if fitsBelow(ram, kernel, size, lim) {
				t.Fatalf("initrd placed at 0x%x above initrd_addr_max though it fits below 0x%x", initrd.start, lim)
			}
			limit = math.MaxUint64
		}
		if up := (span{initrd.start + 4096, initrd.end + 4096}); up.end <= limit && inRAM(up) && !up.overlaps(kernel) {
			t.Fatalf("initrd at 0x%x could have gone a page higher (limit 0x%x)", initrd.start, limit)
		}
	} else if e.InitrdAddr != 0 {
		t.Fatalf("no initrd but InitrdAddr 0x%x", e.InitrdAddr)
	}

	// Exactly these writes, each in RAM, none overlapping another.
	want := []span{{0x500, 0x520}, {0x7000, 0x8000}, {0x20000, 0x20000 + uint64(len(cfg.Cmdline)) + 1}, {e.KernelAddr, e.KernelAddr + pmLen}}
	if size > 0 {
		want = append(want, initrd)
	}
	if !slices.Equal(m.writes, want) {
		t.Fatalf("writes %v, want %v", m.writes, want)
	}
	claimed := append(want[:3:3], kernel)
	if size > 0 {
		claimed = append(claimed, initrd)
	}
	for i, a := range claimed {
		if !inRAM(a) {
			t.Fatalf("write [0x%x, 0x%x) outside usable RAM %v", a.start, a.end, ram)
		}
		for _, b := range claimed[i+1:] {
			if a.overlaps(b) {
				t.Fatalf("[0x%x, 0x%x) overlaps [0x%x, 0x%x)", a.start, a.end, b.start, b.end)
			}
		}
	}
	for _, s := range claimed[:4] {
		if e.IdentityMapEnd < s.end || e.IdentityMapEnd > 1<<32 {
			t.Fatalf("IdentityMapEnd 0x%x does not cover [0x%x, 0x%x)", e.IdentityMapEnd, s.start, s.end)
		}
	}

	zp := zeroPage(t, m)
	if a, s := ramdiskFields(zp); a != e.InitrdAddr || s != size {
		t.Fatalf("boot_params ramdisk 0x%x/0x%x, Entry 0x%x/0x%x", a, s, e.InitrdAddr, size)
	}
	if int(zp[offE820Entries]) != len(e.E820) || binary.LittleEndian.Uint32(zp[offCmdLinePtr:]) != 0x20000 {
		t.Fatalf("boot_params e820_entries %d cmd_line_ptr 0x%x", zp[offE820Entries], binary.LittleEndian.Uint32(zp[offCmdLinePtr:]))
	}
}

// fitsBelow reports whether size bytes fit page-aligned in RAM within [1 MiB, lim), clear of
// the kernel, by trying the lowest aligned start of every free piece.
func fitsBelow(ram []E820Entry, kernel span, size, lim uint64) bool {
	for _, r := range ram {
		lo, hi := max(r.Addr, 1<<20), min(r.End(), lim)
		for _, p := range []span{{lo, min(hi, kernel.start)}, {max(lo, kernel.end), hi}} {
			start := (p.start + 4095) &^ 4095
			if p.start < p.end && start+size <= p.end {
				return true
			}
		}
	}
	return false
}

// randomConfig draws kernels, memory maps and initrds that push against every limit.
func randomConfig(rng *rand.Rand, initrdBuf []byte) Config {
	s := defaultSpec()
	s.setupSects = uint8(rng.IntN(31))
	if rng.IntN(3) == 0 { // a 3.8–5.4 kernel: protocol 2.12, header ends before kernel_info_offset
		s.version, s.hdrEnd = 0x020C, 0x268
	}
	s.pmSize = 1 + rng.IntN(0x10000)
	s.initSize = []uint32{0, uint32(rng.IntN(0x10000)), uint32(rng.Uint64N(256 * mib)), 0x300000}[rng.IntN(4)]
	s.alignment = 1 << (12 + rng.IntN(13))
	s.relocatable = uint8(rng.IntN(2))
	s.prefAddress = []uint64{0, 1 * mib, 16 * mib, rng.Uint64N(8 * gib)}[rng.IntN(4)]
	s.initrdAddrMax = uint32(1*mib + rng.Uint64N(4*gib-1*mib))
	if rng.IntN(4) == 0 { // so low that the initrd often fits only above it
		s.initrdAddrMax = uint32(1*mib + rng.Uint64N(4*mib))
	}
	s.xloadFlags = XLFKernel64
	if rng.IntN(2) == 0 {
		s.xloadFlags |= XLFCanBeLoadedAbove4G
	}
	cfg := Config{
		Kernel:  s.build(),
		MemSize: 1*mib + rng.Uint64N([]uint64{64 * mib, 12 * gib}[rng.IntN(2)]),
		Cmdline: strings.Repeat("x", rng.IntN(3000)),
	}
	if rng.IntN(2) == 0 {
		cfg.PCIHoleStart = (2*mib + rng.Uint64N(4*gib-3*mib)) &^ 4095
	}
	for range rng.IntN(4) {
		cfg.Reserved = append(cfg.Reserved, E820Entry{1*mib + rng.Uint64N(10*gib), 1 + rng.Uint64N(32*mib), E820Reserved})
	}
	if rng.IntN(4) != 0 {
		cfg.Initrd = initrdBuf[:1+rng.IntN(len(initrdBuf))]
	}
	return cfg
}

// TestLoadInvariantsRandom: thousands of random kernels and machines; every successful
// Load satisfies checkLoaded, every failure writes nothing, and the generator reaches
// each interesting outcome often enough to mean something.
func TestLoadInvariantsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	initrdBuf := make([]byte, 2*mib)
	var ok, noRoom, initrdHigh, kernelMoved int
	for i := 0; i < 3000; i++ {
		cfg := randomConfig(rng, initrdBuf)
		m := &recordMem{}
		e, err := Load(m, cfg)
		if err != nil {
			if len(m.writes) != 0 {
				t.Fatalf("failed load (%v) wrote %v", err, m.writes)
			}
			if errors.Is(err, ErrNoRoom) {
				noRoom++
			}
			continue
		}
		checkLoaded(t, cfg, e, m)
		ok++
		h, _ := ParseHeader(cfg.Kernel)
		if e.InitrdAddr+e.InitrdSize > uint64(h.InitrdAddrMax)+1 {
			initrdHigh++
		}
		if h.RelocatableKernel != 0 && e.KernelAddr != max(h.PrefAddress, 1*mib) {
			kernelMoved++
		}
	}
	t.Logf("ok %d, no room %d, initrd above initrd_addr_max %d, kernel away from pref_address %d", ok, noRoom, initrdHigh, kernelMoved)
	if ok < 1000 || noRoom < 100 || initrdHigh < 20 || kernelMoved < 100 {
		t.Fatalf("generator too weak: ok %d, no room %d, initrd high %d, kernel moved %d", ok, noRoom, initrdHigh, kernelMoved)
	}
}

// FuzzLoad: any header fields and machine shape; a successful Load must satisfy
// checkLoaded, a failed one must write nothing.
func FuzzLoad(f *testing.F) {
	f.Add(uint8(27), uint32(0x300000), uint64(16*mib), uint8(21), true, uint32(0x7FFFFFFF), uint16(3), uint64(64*mib), uint32(0), uint32(0x5001), uint16(30), uint16(0x2345))
	f.Add(uint8(0), uint32(0), uint64(0), uint8(12), false, uint32(0x1FFFFFF), uint16(3), uint64(8*gib), uint32(3*gib), uint32(20*mib), uint16(0), uint16(1))
	f.Fuzz(func(t *testing.T, sects uint8, initSize uint32, pref uint64, alignShift uint8, reloc bool,
		initrdMax uint32, xl uint16, memSize uint64, hole uint32, initrdSize uint32, cmdLen uint16, pm uint16) {
		s := defaultSpec()
		s.setupSects, s.initSize, s.prefAddress, s.initrdAddrMax, s.xloadFlags = sects, initSize, pref, initrdMax, xl
		s.alignment = 1 << (alignShift % 32)
		s.relocatable = 0
		if reloc {
			s.relocatable = 1
		}
		s.pmSize = int(pm)
		cfg := Config{
			Kernel:       s.build(),
			Initrd:       make([]byte, initrdSize%(32*mib)),
			Cmdline:      strings.Repeat("c", int(cmdLen)%4096),
			MemSize:      memSize % (16 * gib),
			PCIHoleStart: uint64(hole),
		}
		m := &recordMem{}
		e, err := Load(m, cfg)
		if err != nil {
			if len(m.writes) != 0 {
				t.Fatalf("failed load (%v) wrote %v", err, m.writes)
			}
			return
		}
		checkLoaded(t, cfg, e, m)
	})
}
