package vmm

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/ftckpt/ftckpt/vmm/cow"
)

// PageSize is the granularity of guest memory tracking.
const PageSize = 4096

// Guest-physical layout of RAM. RAM below LowRAMTop is mapped from GPA 0; the
// rest is mapped from 4 GiB, leaving [LowRAMTop, 4 GiB) for MMIO (the
// IOAPIC at 0xFEC00000, the LAPIC at 0xFEE00000, PCI).
const (
	LowRAMTop  = 3 << 30
	HighRAMGPA = 4 << 30

	// MinMemory and MaxMemory bound Config.MemSize. The upper bound is what the
	// bare-metal page tables cover (see boot.go); a 64 GiB guest costs nothing
	// until touched.
	MinMemory = 16 << 20
	MaxMemory = 64 << 30
)

// ErrOutOfRange is returned for a guest-physical range that is not RAM.
var ErrOutOfRange = errors.New("guest-physical range is not RAM")

// Slot is one KVM memory slot: the RAM pages [HostOffset, HostOffset+Size) of
// the host mapping, seen by the guest at GPA.
type Slot struct {
	ID         uint32
	GPA        uint64
	Size       uint64
	HostOffset uint64
}

// FirstPage is the RAM page index of the slot's first page.
func (s Slot) FirstPage() uint64 { return s.HostOffset / PageSize }

// Pages is the number of pages in the slot.
func (s Slot) Pages() uint64 { return s.Size / PageSize }

// GuestMemory is the guest's RAM: one anonymous host mapping, presented to KVM
// as one slot (below LowRAMTop) or two (the rest above 4 GiB).
//
// Pages are numbered by their offset in the host mapping ("RAM page index"),
// which is what the dirty log, checkpoints and snapshots use.
//
// Every write the VMM makes into guest memory goes through WriteAt, which
// marks the page in the VMM-side dirty bitmap: KVM's dirty log sees only
// writes made by vCPUs. Reading through Bytes is allowed; writing through it is
// not (it would escape the next checkpoint).
//
// WriteAt, ReadAt and the dirty bitmap are safe for concurrent use.
type GuestMemory struct {
	host  []byte
	slots []Slot
	// vmmDirty has one bit per RAM page, set atomically by WriteAt, and
	// vmmSummary one bit per word of vmmDirty, set (after the word's bit)
	// when that word may be non-zero: TakeVMMDirty reads only the words it
	// flags, so a harvest costs the pages written, not the memory size
	// (64 GiB of RAM is 256 Ki words, a 4 Ki-word summary).
	vmmDirty   []uint64
	vmmSummary []uint64

	// cowOnce registers the memory for copy-on-write snapshots at the
	// first CopyOnWrite; cow is the region, cowErr why there is none.
	cowOnce sync.Once
	cow     *cow.Region
	cowErr  error
}

// NewGuestMemory maps size bytes of anonymous, lazily allocated memory,
// aligned to the host's huge pages and asking for them (MADV_HUGEPAGE, as
// QEMU does for guest RAM) where the host has transparent huge pages:
// copy-on-write snapshots (package cow) then write-protect a dirty 2 MiB
// of the guest as one entry instead of 512. The host's THP setting decides
// ("never" keeps 4 KiB pages); a kernel without THP refuses the advice,
// and the memory is then mapped in 4 KiB pages.
func NewGuestMemory(size int64) (*GuestMemory, error) {
	if err := ValidateMemSize(size); err != nil {
		return nil, err
	}
	host, err := mapAligned(int(size), cow.HugePageSize)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of guest memory: %w", size, err)
	}
	if err := unix.Madvise(host, unix.MADV_HUGEPAGE); err != nil && err != unix.EINVAL {
		return nil, errors.Join(fmt.Errorf("madvise(MADV_HUGEPAGE) on guest memory: %w", err), unmap(host))
	}
	words := (size/PageSize + 63) / 64
	m := &GuestMemory{host: host, vmmDirty: make([]uint64, words), vmmSummary: make([]uint64, (words+63)/64)}
	low := uint64(size)
	if low > LowRAMTop {
		low = LowRAMTop
	}
	m.slots = append(m.slots, Slot{ID: 0, GPA: 0, Size: low, HostOffset: 0})
	if uint64(size) > LowRAMTop {
		m.slots = append(m.slots, Slot{ID: 1, GPA: HighRAMGPA, Size: uint64(size) - LowRAMTop, HostOffset: LowRAMTop})
	}
	return m, nil
}

// ValidateMemSize says why size cannot be a guest's memory size, or nil.
func ValidateMemSize(size int64) error {
	switch {
	case size < MinMemory:
		return fmt.Errorf("memory size %d bytes: below the minimum of %d MiB", size, MinMemory>>20)
	case size > MaxMemory:
		return fmt.Errorf("memory size %d bytes: above the maximum of %d GiB", size, MaxMemory>>30)
	case size%(2<<20) != 0:
		return fmt.Errorf("memory size %d bytes: not a multiple of 2 MiB", size)
	}
	return nil
}

// Close unmaps the memory, after a copy-on-write snapshot under way has
// finished. The memory must not be used afterwards.
func (m *GuestMemory) Close() error {
	if m.host == nil {
		return nil
	}
	var err error
	if m.cow != nil {
		err = m.cow.Close()
	}
	err = errors.Join(err, unmap(m.host))
	m.host = nil
	return err
}

// CopyOnWrite snapshots RAM pages pfns (ascending) for a copy into dst,
// page i at dst[i*PageSize:], as they are now, without holding up their
// writers for the copy: see package cow (the snapshot's Start lets its
// background copy go). Its error wraps cow.ErrUnsupported where
// the host cannot (the caller copies the pages itself).
// Precondition: nothing writes guest memory during the call (the machine
// is paused); one call at a time.
func (m *GuestMemory) CopyOnWrite(pfns []uint64, dst []byte) (*cow.Snapshot, error) {
	m.cowOnce.Do(func() { m.cow, m.cowErr = cow.Register(m.host) })
	if m.cowErr != nil {
		return nil, m.cowErr
	}
	return m.cow.Snapshot(pfns, dst)
}

// Size is the number of bytes of RAM.
func (m *GuestMemory) Size() int64 { return int64(len(m.host)) }

// Pages is the number of RAM pages.
func (m *GuestMemory) Pages() uint64 { return uint64(len(m.host)) / PageSize }

// Slots returns the KVM memory slots, in order of GPA.
func (m *GuestMemory) Slots() []Slot { return append([]Slot(nil), m.slots...) }

// Bytes returns the host mapping of all RAM, indexed by RAM offset (not GPA).
// It is for reading (copying pages aside, hashing); writes must use WriteAt
// or WritePage.
func (m *GuestMemory) Bytes() []byte { return m.host }

// Page returns RAM page i, for reading.
func (m *GuestMemory) Page(i uint64) []byte { return m.host[i*PageSize : (i+1)*PageSize] }

// offset translates the guest-physical range [gpa, gpa+n) to an offset in the
// host mapping. The range must lie inside one slot.
func (m *GuestMemory) offset(gpa uint64, n int) (uint64, error) {
	for _, s := range m.slots {
		if gpa >= s.GPA && gpa-s.GPA <= s.Size && uint64(n) <= s.Size-(gpa-s.GPA) {
			return s.HostOffset + gpa - s.GPA, nil
		}
	}
	return 0, fmt.Errorf("%w: [%#x, +%d)", ErrOutOfRange, gpa, n)
}

// WriteAt copies p into guest memory at guest-physical address gpa and marks
// the touched pages dirty for the next checkpoint. It is the only way the VMM
// writes guest memory.
func (m *GuestMemory) WriteAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address %d", ErrOutOfRange, gpa)
	}
	off, err := m.offset(uint64(gpa), len(p))
	if err != nil {
		return 0, err
	}
	copy(m.host[off:], p)
	m.markDirty(off, len(p))
	return len(p), nil
}

// ReadAt copies guest memory at guest-physical address gpa into p.
func (m *GuestMemory) ReadAt(p []byte, gpa int64) (int, error) {
	if gpa < 0 {
		return 0, fmt.Errorf("%w: negative address %d", ErrOutOfRange, gpa)
	}
	off, err := m.offset(uint64(gpa), len(p))
	if err != nil {
		return 0, err
	}
	return copy(p, m.host[off:]), nil
}

// WritePage replaces RAM page i (by RAM page index, not GPA) and marks it
// dirty. Restore and checkpoint apply use it.
func (m *GuestMemory) WritePage(i uint64, data []byte) error {
	if i >= m.Pages() || len(data) != PageSize {
		return fmt.Errorf("%w: page %d (of %d), %d bytes", ErrOutOfRange, i, m.Pages(), len(data))
	}
	copy(m.host[i*PageSize:], data)
	m.markDirty(i*PageSize, PageSize)
	return nil
}

func (m *GuestMemory) markDirty(off uint64, n int) {
	if n == 0 {
		return
	}
	first, last := off/PageSize, (off+uint64(n)-1)/PageSize
	for p := first; p <= last; p++ {
		w := p / 64
		atomic.OrUint64(&m.vmmDirty[w], 1<<(p%64))
		// After the page's bit: a TakeVMMDirty that clears this summary
		// bit reads the word after it, and so sees the page.
		atomic.OrUint64(&m.vmmSummary[w/64], 1<<(w%64))
	}
}

// CountVMMDirty is how many pages TakeVMMDirty would take now, without
// taking them. Safe alongside writers and TakeVMMDirty (a count then).
func (m *GuestMemory) CountVMMDirty() int {
	n := 0
	for j := range m.vmmSummary {
		for s := atomic.LoadUint64(&m.vmmSummary[j]); s != 0; s &= s - 1 {
			n += bits.OnesCount64(atomic.LoadUint64(&m.vmmDirty[j*64+bits.TrailingZeros64(s)]))
		}
	}
	return n
}

// TakeVMMDirty moves the VMM-side dirty bits into dst (OR-ing them in) and
// clears them. dst must have one bit per RAM page (len ≥ (Pages()+63)/64). It
// returns how many pages were dirty. Its cost is one load per 4096 pages
// plus the words written since the last call.
func (m *GuestMemory) TakeVMMDirty(dst []uint64) int {
	n := 0
	for j := range m.vmmSummary {
		if atomic.LoadUint64(&m.vmmSummary[j]) == 0 {
			continue
		}
		// Clear the summary word before reading the words it flags: a
		// page marked meanwhile sets its summary bit again.
		s := atomic.SwapUint64(&m.vmmSummary[j], 0)
		for s != 0 {
			i := j*64 + bits.TrailingZeros64(s)
			s &= s - 1
			w := atomic.SwapUint64(&m.vmmDirty[i], 0)
			dst[i] |= w
			n += bits.OnesCount64(w)
		}
	}
	return n
}

// Resident reports, for each RAM page, whether it has ever been touched
// (mincore): pages never touched are zero and need not be saved.
func (m *GuestMemory) Resident() ([]byte, error) {
	vec := make([]byte, m.Pages())
	if err := mincore(m.host, vec); err != nil {
		return nil, fmt.Errorf("mincore on guest memory: %w", err)
	}
	return vec, nil
}
