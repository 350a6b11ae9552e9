package linuxboot

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestBuildE820Small(t *testing.T) {
	got, err := BuildE820(64*mib, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x100000 - 0x9FC00, E820Reserved},
		{0x100000, 64*mib - 0x100000, E820RAM},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

// TestBuildE820HoleAndDevices: 8 GiB with a 3 GiB hole and the LAPIC/IOAPIC pages,
// which lie in the hole and so are reported as reserved with no RAM around them.
func TestBuildE820HoleAndDevices(t *testing.T) {
	got, err := BuildE820(8*gib, 3*gib, []E820Entry{
		{0xFEE00000, 0x1000, E820Reserved}, // LAPIC
		{0xFEC00000, 0x1000, E820Reserved}, // IOAPIC, given out of order
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x60400, E820Reserved},
		{0x100000, 3*gib - 0x100000, E820RAM},
		{0xFEC00000, 0x1000, E820Reserved},
		{0xFEE00000, 0x1000, E820Reserved},
		{4 * gib, 5 * gib, E820RAM},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if RAMRanges(8*gib, 3*gib)[1] != (E820Entry{4 * gib, 5 * gib, E820RAM}) {
		t.Errorf("RAMRanges high part %v", RAMRanges(8*gib, 3*gib)[1])
	}
	if r := RAMRanges(2*gib, 3*gib); len(r) != 1 || r[0].Size != 2*gib {
		t.Errorf("RAM below the hole start: %v, want one range", r)
	}
}

// TestBuildE820ReservedSplitsRAM: a reserved range inside RAM splits it; one reaching
// into the BIOS area merges with it; ACPI data beside them keeps its type.
func TestBuildE820ReservedSplitsRAM(t *testing.T) {
	got, err := BuildE820(64*mib, 0, []E820Entry{
		{0x800000, 0x1000, E820Reserved},
		{0x9F000, 0x2000, E820Reserved}, // overlaps [0x9FC00, 1 MiB)
		{0x801000, 0x1000, E820ACPI},    // touches the first, another type
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []E820Entry{
		{0, 0x9F000, E820RAM},
		{0x9F000, 0x100000 - 0x9F000, E820Reserved},
		{0x100000, 0x700000, E820RAM},
		{0x800000, 0x1000, E820Reserved},
		{0x801000, 0x1000, E820ACPI},
		{0x802000, 64*mib - 0x802000, E820RAM},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestBuildE820Rejects(t *testing.T) {
	many := make([]E820Entry, 130)
	for i := range many {
		many[i] = E820Entry{uint64(2*mib + i*2*pageSize), pageSize, E820Reserved}
	}
	cases := []struct {
		name     string
		mem      uint64
		hole     uint64
		reserved []E820Entry
		want     string
	}{
		{"less than 1 MiB", 1*mib - 1, 0, nil, "less than the 1 MiB"},
		{"hole below 1 MiB", 4 * gib, 0x80000, nil, "PCI hole"},
		{"hole at 4 GiB", 8 * gib, 4 * gib, nil, "PCI hole"},
		{"hole unaligned", 8 * gib, 3*gib + 1, nil, "PCI hole"},
		{"RAM-typed extra", 64 * mib, 0, []E820Entry{{2 * mib, pageSize, E820RAM}}, "non-RAM"},
		{"zero-typed extra", 64 * mib, 0, []E820Entry{{2 * mib, pageSize, 0}}, "non-RAM"},
		{"empty extra", 64 * mib, 0, []E820Entry{{2 * mib, 0, E820Reserved}}, "empty or wraps"},
		{"wrapping extra", 64 * mib, 0, []E820Entry{{^uint64(0) - 10, 100, E820Reserved}}, "empty or wraps"},
		{"types overlap", 64 * mib, 0, []E820Entry{{2 * mib, 2 * pageSize, E820Reserved}, {2*mib + pageSize, pageSize, E820NVS}}, "another type"},
		{"too many entries", 64 * mib, 0, many, "holds 128"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := BuildE820(c.mem, c.hole, c.reserved)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("BuildE820: %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestValidateE820Rejects(t *testing.T) {
	ok := []E820Entry{{0, 0x1000, E820RAM}, {0x1000, 0x1000, E820Reserved}}
	if err := ValidateE820(ok); err != nil {
		t.Fatalf("valid table: %v", err)
	}
	cases := map[string][]E820Entry{
		"empty":       nil,
		"unsorted":    {{0x1000, 0x1000, E820RAM}, {0, 0x1000, E820Reserved}},
		"overlapping": {{0, 0x1001, E820RAM}, {0x1000, 0x1000, E820Reserved}},
		"zero size":   {{0, 0, E820RAM}},
		"wraps":       {{^uint64(0) - 0xFFF, 0x2000, E820RAM}},
		"type 0":      {{0, 0x1000, 0}},
		"type 6":      {{0, 0x1000, 6}},
		"129 entries": func() []E820Entry {
			t := make([]E820Entry, 129)
			for i := range t {
				t[i] = E820Entry{uint64(i) * 0x1000, 0x1000, E820RAM}
			}
			return t
		}(),
	}
	for name, table := range cases {
		if err := ValidateE820(table); err == nil {
			t.Errorf("%s: accepted %v", name, table)
		}
	}
}

// TestBuildE820MatchesReference: random memory sizes, holes and reserved ranges; at every
// boundary address (and its neighbours) the built table must say what a direct definition
// says: the extra range's type if one covers it, else reserved in [0x9FC00, 1 MiB), else
// RAM if RAMRanges covers it, else nothing.
func TestBuildE820MatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	types := []E820Type{E820Reserved, E820ACPI, E820NVS, E820Unusable}
	checked := 0
	for iter := 0; iter < 2000; iter++ {
		mem := uint64(1*mib) + rng.Uint64N(8*gib)
		var hole uint64
		if rng.IntN(2) == 0 {
			hole = (2*mib + rng.Uint64N(4*gib-3*mib)) &^ (pageSize - 1)
		}
		var extra []E820Entry
		for range rng.IntN(6) {
			addr, size := rng.Uint64N(10*gib), 1+rng.Uint64N(64*mib)
			if rng.IntN(3) == 0 {
				addr, size = rng.Uint64N(2*mib), 1+rng.Uint64N(256*kib)
			}
			typ := E820Reserved // mostly one type, so that overlaps merge rather than fail
			if rng.IntN(4) == 0 {
				typ = types[rng.IntN(len(types))]
			}
			extra = append(extra, E820Entry{addr, size, typ})
		}
		table, err := BuildE820(mem, hole, extra)
		if err != nil {
			if strings.Contains(err.Error(), "another type") || strings.Contains(err.Error(), "holds 128") {
				continue
			}
			t.Fatalf("mem 0x%x hole 0x%x extra %v: %v", mem, hole, extra, err)
		}
		if err := ValidateE820(table); err != nil {
			t.Fatalf("built table %v: %v", table, err)
		}
		ram := RAMRanges(mem, hole)
		ref := func(a uint64) E820Type {
			for _, e := range extra {
				if a >= e.Addr && a < e.End() {
					return e.Type
				}
			}
			if a >= 0x9FC00 && a < 0x100000 {
				return E820Reserved
			}
			for _, r := range ram {
				if a >= r.Addr && a < r.End() {
					return E820RAM
				}
			}
			return 0
		}
		got := func(a uint64) E820Type {
			for _, e := range table {
				if a >= e.Addr && a < e.End() {
					return e.Type
				}
			}
			return 0
		}
		var probes []uint64
		for _, e := range append(append(slices.Clone(extra), ram...), table...) {
			probes = append(probes, e.Addr-1, e.Addr, e.Addr+1, e.End()-1, e.End(), e.End()+1)
		}
		probes = append(probes, 0x9FBFF, 0x9FC00, 0xFFFFF, 0x100000)
		for _, a := range probes {
			if g, w := got(a), ref(a); g != w {
				t.Fatalf("mem 0x%x hole 0x%x extra %v\ntable %v\naddress 0x%x: type %d, want %d", mem, hole, extra, table, a, g, w)
			}
		}
		checked++
	}
	if checked < 1500 {
		t.Fatalf("only %d of 2000 random maps were buildable: the generator is not exercising BuildE820", checked)
	}
	t.Logf("%d random maps checked", checked)
}
