package linuxboot

// Where the loader puts what in guest-physical memory. The low addresses follow the layout
// Firecracker and other KVM loaders use, so they stay clear of the vmm's page tables as
// long as those sit elsewhere below 0x9FC00 (for example 0x9000–0xBFFF).
const (
	GDTAddr      = 0x500   // the boot GDT, gdtSize bytes
	ZeroPageAddr = 0x7000  // struct boot_params, 4096 bytes; RSI at entry
	CmdlineAddr  = 0x20000 // the NUL-terminated command line
	// MaxCmdlineRoom is the room for the command line and its NUL before the EBDA.
	MaxCmdlineRoom = ebdaStart - CmdlineAddr
	// MinHighAddr is the lowest address the kernel or the initrd may occupy (1 MiB).
	MinHighAddr = highStart
	pageSize    = 4096
)

// span is a half-open guest-physical range [start, end).
type span struct{ start, end uint64 }

func (s span) overlaps(o span) bool { return s.start < o.end && o.start < s.end }

// containedIn reports whether s lies wholly inside one of the ranges.
func (s span) containedIn(ranges []E820Entry) bool {
	for _, r := range ranges {
		if s.start >= r.Addr && s.end <= r.End() {
			return true
		}
	}
	return false
}

func alignUp(x, a uint64) (uint64, bool) {
	y := (x + a - 1) &^ (a - 1)
	return y, y >= x
}

func alignDown(x, a uint64) uint64 { return x &^ (a - 1) }

// lowestFit returns the lowest a-aligned address ≥ floor at which size bytes fit inside one
// of the ranges and end at or below limit.
func lowestFit(ranges []E820Entry, size, a, floor, limit uint64) (uint64, bool) {
	for _, r := range ranges {
		start, ok := alignUp(max(r.Addr, floor), a)
		if !ok {
			continue
		}
		end := start + size
		if end >= start && end <= r.End() && end <= limit {
			return start, true
		}
	}
	return 0, false
}

// highestFit returns the highest a-aligned address at which size bytes fit inside one of
// the sorted ranges, within [floor, limit), touching none of the busy spans.
func highestFit(ranges []E820Entry, busy []span, size, a, floor, limit uint64) (uint64, bool) {
	for i := len(ranges) - 1; i >= 0; i-- {
		r := span{max(ranges[i].Addr, floor), min(ranges[i].End(), limit)}
		if r.start >= r.end {
			continue
		}
		free := []span{r}
		for _, b := range busy {
			free = cut(free, b)
		}
		for j := len(free) - 1; j >= 0; j-- {
			f := free[j]
			if f.end-f.start < size {
				continue
			}
			if start := alignDown(f.end-size, a); start >= f.start {
				return start, true
			}
		}
	}
	return 0, false
}

// cut removes b from each span, keeping the result sorted.
func cut(in []span, b span) []span {
	var out []span
	for _, s := range in {
		if !s.overlaps(b) {
			out = append(out, s)
			continue
		}
		if s.start < b.start {
			out = append(out, span{s.start, b.start})
		}
		if b.end < s.end {
			out = append(out, span{b.end, s.end})
		}
	}
	return out
}
