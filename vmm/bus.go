package vmm

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

// PIODevice handles guest accesses to a range of I/O ports. It is called on
// the accessing vCPU's thread; a device shared by several vCPUs locks its own
// state. data is 1, 2 or 4 bytes, little-endian.
type PIODevice interface {
	// PIORead fills data for an IN from port.
	PIORead(port uint16, data []byte)
	// PIOWrite handles an OUT of data to port.
	PIOWrite(port uint16, data []byte)
}

type pioRange struct {
	base, size uint16
	dev        PIODevice
}

// IOBus routes port I/O to devices. Registration happens while the machine is
// being built (attach); lookups afterwards take no lock.
type IOBus struct {
	ranges []pioRange // sorted by base, non-overlapping
	// unhandled remembers which unclaimed ports were already logged.
	unhandledMu sync.Mutex
	unhandled   map[uint16]bool
}

// register claims every range in ranges, or, if one is invalid or overlaps
// another, none. Machine.attach is its only caller: a device's ports come
// with the device.
func (b *IOBus) register(ranges ...pioRange) error {
	for i, n := range ranges {
		if n.size == 0 || int(n.base)+int(n.size) > 1<<16 {
			return fmt.Errorf("I/O port range [%#x, +%d): invalid", n.base, n.size)
		}
		for _, r := range append(b.ranges[:len(b.ranges):len(b.ranges)], ranges[:i]...) {
			if n.base < r.base+r.size && r.base < n.base+n.size {
				return fmt.Errorf("I/O port range [%#x, +%d) overlaps [%#x, +%d)", n.base, n.size, r.base, r.size)
			}
		}
	}
	b.ranges = append(b.ranges, ranges...)
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	return nil
}

func (b *IOBus) find(port uint16) *pioRange {
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > port })
	if i < len(b.ranges) && b.ranges[i].base <= port {
		return &b.ranges[i]
	}
	return nil
}

// PIO dispatches one access. Reads of unclaimed ports return all ones, as on
// a PC; writes to them are dropped. Each unclaimed port is logged once.
func (b *IOBus) PIO(port uint16, data []byte, write bool) {
	if r := b.find(port); r != nil {
		if write {
			r.dev.PIOWrite(port, data)
		} else {
			r.dev.PIORead(port, data)
		}
		return
	}
	if !write {
		for i := range data {
			data[i] = 0xff
		}
	}
	b.unhandledMu.Lock()
	defer b.unhandledMu.Unlock()
	if b.unhandled == nil {
		b.unhandled = map[uint16]bool{}
	}
	if !b.unhandled[port] {
		b.unhandled[port] = true
		slog.Debug("guest accessed an unclaimed I/O port", "port", fmt.Sprintf("%#x", port), "write", write)
	}
}
