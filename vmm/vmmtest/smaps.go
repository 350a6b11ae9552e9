package vmmtest

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// Mapping is a mapping of this process, as /proc/self/smaps lists it.
type Mapping struct {
	Start, End uintptr
	// Flags are its VmFlags ("hg": advised to use huge pages).
	Flags []string
	// AnonHuge is how many of its bytes are in anonymous huge pages
	// (AnonHugePages).
	AnonHuge int64
}

// MappingAt returns the mapping of this process that holds addr, and
// whether there is one.
func MappingAt(t testing.TB, addr uintptr) (Mapping, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var m Mapping
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		field, rest, _ := strings.Cut(line, " ")
		if lo, hi, ok := strings.Cut(field, "-"); ok { // a mapping's first line: start-end perms ...
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil && uintptr(start) <= addr && addr < uintptr(end) {
				m, found = Mapping{Start: uintptr(start), End: uintptr(end)}, true
			}
			continue
		}
		if !found {
			continue
		}
		switch field {
		case "AnonHugePages:":
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("smaps: %q: %v", line, err)
			}
			m.AnonHuge = kb << 10
		case "VmFlags:": // a mapping's last line
			m.Flags = strings.Fields(rest)
			return m, true
		}
	}
	return m, found
}
