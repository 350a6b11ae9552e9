// Package guests embeds the bare-metal guest programs that ftckpt runs as
// workloads, tests and demos.
//
// The programs are C (progs/, lib/, pure/ in this directory), built by
// `make guests` into build/NAME.elf: static x86-64 ELF images linked at
// 1 MiB that follow the VMM↔guest contract of include/bootinfo.h (entry
// state, memory layout, ports, boot-info page). This package only carries
// the bytes; it knows nothing of KVM. Images are embedded at Go build
// time, so run `make guests` before `go build` for them to be present.
package guests

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
)

//go:embed all:build
var buildFS embed.FS

// catalog lists every guest program with its one-line description. It
// must match progs/*.c (a test checks this).
var catalog = map[string]string{
	"counter":  "prints \"count N\" for N = 0, 1, 2, ... (params: limit, every)",
	"smp":      "all vCPUs count under a spinlock; vCPU 0 checks the sums each round (params: iters, rounds)",
	"memtouch": "dirties pages of a working set at a set rate (params: ws, dirty, mode=small|full, rate, passes, every, seed, writers, fill=1 to fill the working set first)",
	"tick":     "PIT timer interrupts through the 8259 PIC, printing \"tick N\" (params: hz, every, ticks)",
	"disk":     "virtio-blk: writes checksummed records and verifies them (params: records, start, verify_only)",
	"kv":       "virtio-net: UDP key-value server with SET/GET/INCR, answers ARP; with a virtio-blk disk, persists before replying (params: ip, port, report, journal, persist_every, flush)",
}

// Names returns the guest programs' names, sorted.
func Names() []string {
	names := make([]string, 0, len(catalog))
	for n := range catalog {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Describe returns the one-line description of guest name, or "" if there
// is no such guest.
func Describe(name string) string {
	return catalog[name]
}

// Image returns the ELF image of guest name. It fails for a name not in
// Names, and for a guest that was not built before this binary was.
func Image(name string) ([]byte, error) {
	return image(buildFS, name)
}

// image reads guest name's ELF from fsys, which holds build/NAME.elf.
func image(fsys fs.FS, name string) ([]byte, error) {
	if _, ok := catalog[name]; !ok {
		return nil, fmt.Errorf("unknown guest %q (have: %s)", name, strings.Join(Names(), ", "))
	}
	b, err := fs.ReadFile(fsys, "build/"+name+".elf")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("guest %q is not built: run `make guests`", name)
	}
	if err != nil {
		return nil, fmt.Errorf("reading guest %q: %w", name, err)
	}
	return b, nil
}
