package dirtylog

import (
	"fmt"

	"github.com/ftckpt/ftckpt/vmm"
)

// slotPages places one KVM memory slot among the RAM pages.
type slotPages struct {
	id    uint32
	first uint64 // RAM page index of the slot's page 0
	pages uint64
}

func slotsOf(mem *vmm.GuestMemory) []slotPages {
	var out []slotPages
	for _, s := range mem.Slots() {
		out = append(out, slotPages{id: s.ID, first: s.FirstPage(), pages: s.Pages()})
	}
	return out
}

// ramPage converts a dirty-ring entry's slot field (address space << 16 |
// slot id) and slot-relative page offset into a RAM page index.
func ramPage(slots []slotPages, slotField uint32, offset uint64) (uint64, error) {
	as, id := slotField>>16, slotField&0xffff
	if as != 0 {
		return 0, fmt.Errorf("dirty page in address space %d (slot %d, page %d): only address space 0 is RAM", as, id, offset)
	}
	for _, s := range slots {
		if s.id == id {
			if offset >= s.pages {
				return 0, fmt.Errorf("dirty page %d of slot %d, which has %d pages", offset, id, s.pages)
			}
			return s.first + offset, nil
		}
	}
	return 0, fmt.Errorf("dirty page %d of unknown slot %d", offset, id)
}
