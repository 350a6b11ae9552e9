package vmm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The machine-state encoding (everything but memory) and the snapshot file
// (machine state plus memory). Both are little-endian:
//
//	state:    "FTCKVMST" version:u32 flags:u32 (0)
//	          vcpus:u32 irqchip:u32 (0 or 1) memsize:u64
//	          nsections:u32 { idlen:u16 id version:u32 len:u32 data }…
//	          crc32c:u32 (of everything before it)
//
//	snapshot: "FTCKSNAP" version:u32 flags:u32 (0) statelen:u64 state
//	          { page:u64 data:[4096] }… endOfPages:u64
//	          crc32c:u32 (of everything before it) "SNAPEND!"
//
// A state's sections are keyed by component ID (1 to maxComponentID bytes),
// each ID at most once: restore finds a component's section by its ID, not
// by its place. EncodeState writes them in increasing byte order of ID;
// DecodeState takes them in any order. Version 1 matched sections to
// components by position and allowed an ID twice; it is refused.
//
// Pages appear in increasing order; pages not listed are zero.

const (
	stateMagic       = "FTCKVMST"
	stateVersion     = 2
	snapshotMagic    = "FTCKSNAP"
	snapshotVersion  = 1
	snapshotTrailer  = "SNAPEND!"
	endOfPages       = ^uint64(0)
	maxSections      = 4096
	maxSectionLen    = 16 << 20
	maxStateLen      = 256 << 20
	maxComponentID   = 256
	stateHeaderBytes = 8 + 4 + 4 + 4 + 4 + 8 + 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Section is one component's saved state: what its SaveState returned, in
// the encoding its StateVersion names.
type Section struct {
	Version uint32
	Data    []byte
}

// StateConfig is the part of a machine's configuration its state depends on:
// a state restores only into a machine built the same way.
type StateConfig struct {
	VCPUs   int
	IRQChip bool
	MemSize int64
}

// MachineState is a decoded machine state.
type MachineState struct {
	Config StateConfig
	// Sections holds each component's state by the component's ID.
	Sections map[string]Section
}

// SaveState captures every component's state (not memory), encoded and
// checksummed. vCPUs save in parallel, each on its own thread. After
// PauseSaving the vCPUs have done so already and the one that finished last
// has assembled the whole state: SaveState waits for that if need be and
// returns it, once (a second call in the same pause saves the VM and the
// devices again, with the vCPUs' captures).
// Precondition: the machine is paused or not yet started.
func (m *Machine) SaveState() ([]byte, error) {
	m.mu.Lock()
	m.waitCapturedLocked()
	st, ahead := m.state, m.saving
	state, err := m.ahead, m.aheadErr
	m.ahead, m.aheadErr = nil, nil
	m.mu.Unlock()
	if st != statePaused && st != stateCreated {
		return nil, fmt.Errorf("saving state: machine is %v: %w", st, ErrNotPaused)
	}
	if state != nil || err != nil {
		return state, err
	}
	return m.saveState(ahead)
}

// saveState saves every component's state and encodes it: each vCPU's
// capture if ahead (PauseSaving's; the vCPUs are then not asked), else each
// vCPU's thread captures it now.
// Precondition: the machine is paused or not yet started; if ahead, every
// vCPU has captured its state since it last ran.
func (m *Machine) saveState(ahead bool) ([]byte, error) {
	comps := m.components()
	sections := make([]Section, len(comps))
	errs := make([]error, len(comps))
	var wg sync.WaitGroup
	for i, c := range comps {
		if v, ok := c.(*VCPU); ok && ahead {
			sections[i] = Section{Version: v.StateVersion(), Data: v.savedEncoded}
			if v.savedErr != nil {
				errs[i] = fmt.Errorf("%s: %w", v.ID(), v.savedErr)
			}
			continue
		}
		if _, ok := c.(*VCPU); !ok {
			// On this goroutine: a device or the VM answers in microseconds,
			// less than a goroutine's start.
			data, err := c.SaveState()
			sections[i], errs[i] = Section{Version: c.StateVersion(), Data: data}, err
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, err := c.SaveState()
			sections[i] = Section{Version: c.StateVersion(), Data: data}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("saving state: %w", err)
	}
	ids := make([]string, len(comps))
	for i, c := range comps {
		ids[i] = c.ID()
	}
	return encodeSections(m.stateBuffer(), m.stateConfig(), ids, sections)
}

// RecycleState implements machine.StateRecycler: the next states are
// encoded into state's buffer, which its caller must no longer use.
func (m *Machine) RecycleState(state []byte) {
	select {
	case m.recycled <- state[:0]:
	default: // enough kept
	}
}

// stateBuffer is a buffer given back with RecycleState, emptied, or nil.
func (m *Machine) stateBuffer() []byte {
	select {
	case b := <-m.recycled:
		return b
	default:
		return nil
	}
}

func (m *Machine) stateConfig() StateConfig {
	return StateConfig{VCPUs: m.cfg.VCPUs, IRQChip: m.cfg.IRQChip, MemSize: m.cfg.MemSize}
}

// RestoreState loads a state from SaveState into this machine. The whole
// state is decoded, and each of the machine's components finds its section
// by its ID, before any of them changes: a state with a section no
// component claims, or without a component's section, is refused with the
// IDs named (ErrMismatch), and so is one that has an ID twice. Components
// restore in machine order, whatever the order of the sections (the VM's
// irqchips and clock, then vCPUs, then devices); see VCPU.RestoreState for
// the order within a vCPU.
// Precondition: the machine is paused or not yet started.
func (m *Machine) RestoreState(data []byte) error {
	m.mu.Lock()
	m.waitCapturedLocked()
	m.saving = false // what the vCPUs captured is not what they will hold
	m.ahead, m.aheadErr = nil, nil
	st := m.state
	m.mu.Unlock()
	if st != statePaused && st != stateCreated {
		return fmt.Errorf("restoring state: machine is %v: %w", st, ErrNotPaused)
	}
	ms, err := DecodeState(data)
	if err != nil {
		return err
	}
	if ms.Config != m.stateConfig() {
		return fmt.Errorf("restoring state: saved from %+v, this machine is %+v: %w", ms.Config, m.stateConfig(), ErrMismatch)
	}
	comps := m.components()
	sections, err := matchSections(comps, ms.Sections)
	if err != nil {
		return fmt.Errorf("restoring state: %w", err)
	}
	for i, c := range comps {
		if err := c.RestoreState(sections[i].Version, sections[i].Data); err != nil {
			return fmt.Errorf("restoring %s: %w", c.ID(), err)
		}
	}
	return nil
}

// matchSections finds each component's section by the component's ID and
// returns them in the components' order. It changes nothing. It refuses,
// naming every ID at fault, two components with one ID, a component with no
// section and a section no component claims.
func matchSections(comps []Component, sections map[string]Section) ([]Section, error) {
	matched := make([]Section, len(comps))
	claimed := make(map[string]bool, len(comps))
	var shared, missing, unclaimed []string
	for i, c := range comps {
		id := c.ID()
		if claimed[id] {
			shared = append(shared, id)
			continue
		}
		claimed[id] = true
		s, ok := sections[id]
		if !ok {
			missing = append(missing, id)
			continue
		}
		matched[i] = s
	}
	for id := range sections {
		if !claimed[id] {
			unclaimed = append(unclaimed, id)
		}
	}
	slices.Sort(unclaimed)
	var faults []string
	if len(shared) > 0 {
		faults = append(faults, "this machine has more than one component "+quoteIDs(shared))
	}
	if len(missing) > 0 {
		faults = append(faults, "no section for "+quoteIDs(missing))
	}
	if len(unclaimed) > 0 {
		faults = append(faults, "no component of this machine is "+quoteIDs(unclaimed))
	}
	if faults != nil {
		return nil, fmt.Errorf("%s: %w", strings.Join(faults, "; "), ErrMismatch)
	}
	return matched, nil
}

// quoteIDs lists component IDs for an error: "a", "b".
func quoteIDs(ids []string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = strconv.Quote(id)
	}
	return strings.Join(q, ", ")
}

// EncodeState encodes a machine state, its sections in increasing order of
// ID (so a state has one encoding).
func EncodeState(ms *MachineState) ([]byte, error) {
	ids := slices.Sorted(maps.Keys(ms.Sections))
	return encodeState(ms, ids)
}

// encodeState encodes ms with its sections in the order ids gives (every ID
// of ms once; tests give other orders).
func encodeState(ms *MachineState, ids []string) ([]byte, error) {
	if len(ms.Sections) > maxSections {
		return nil, fmt.Errorf("encoding state: %d sections, at most %d", len(ms.Sections), maxSections)
	}
	sections := make([]Section, len(ids))
	for i, id := range ids {
		sections[i] = ms.Sections[id]
	}
	return appendSections(nil, ms.Config, ids, sections)
}

// encodeSections encodes the state of a machine of configuration cfg whose
// components are ids, with their sections, in increasing order of ID,
// appended to into (which may be nil). It refuses an ID given twice.
func encodeSections(into []byte, cfg StateConfig, ids []string, sections []Section) ([]byte, error) {
	if len(ids) > maxSections {
		return nil, fmt.Errorf("encoding state: %d sections, at most %d", len(ids), maxSections)
	}
	order := make([]int, len(ids))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(ids[a], ids[b]) })
	sortedIDs := make([]string, len(ids))
	sorted := make([]Section, len(ids))
	for k, i := range order {
		if k > 0 && ids[i] == sortedIDs[k-1] {
			return nil, fmt.Errorf("saving state: two components are %q: %w", ids[i], ErrMismatch)
		}
		sortedIDs[k], sorted[k] = ids[i], sections[i]
	}
	return appendSections(into, cfg, sortedIDs, sorted)
}

// appendSections appends the encoded state: the header for cfg, section i
// as ids[i] with sections[i], in that order, and the checksum.
func appendSections(b []byte, cfg StateConfig, ids []string, sections []Section) ([]byte, error) {
	size := stateHeaderBytes + 4
	for i, id := range ids {
		s := sections[i]
		if len(id) == 0 || len(id) > maxComponentID || len(s.Data) > maxSectionLen {
			return nil, fmt.Errorf("encoding state: section %q of %d bytes: id or size out of bounds", id, len(s.Data))
		}
		size += 2 + len(id) + 4 + 4 + len(s.Data)
	}
	b = slices.Grow(b, size)
	start := len(b)
	irqchip := uint32(0)
	if cfg.IRQChip {
		irqchip = 1
	}
	le := binary.LittleEndian
	b = append(b, stateMagic...)
	b = le.AppendUint32(b, stateVersion)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, uint32(cfg.VCPUs))
	b = le.AppendUint32(b, irqchip)
	b = le.AppendUint64(b, uint64(cfg.MemSize))
	b = le.AppendUint32(b, uint32(len(ids)))
	for i, id := range ids {
		b = le.AppendUint16(b, uint16(len(id)))
		b = append(b, id...)
		b = le.AppendUint32(b, sections[i].Version)
		b = le.AppendUint32(b, uint32(len(sections[i].Data)))
		b = append(b, sections[i].Data...)
	}
	return le.AppendUint32(b, crc32.Checksum(b[start:], castagnoli)), nil
}

// DecodeState decodes and verifies a machine state. It trusts no length.
func DecodeState(data []byte) (*MachineState, error) {
	if len(data) < 8 || string(data[:8]) != stateMagic {
		if len(data) < 8 && bytes.HasPrefix([]byte(stateMagic), data) {
			return nil, fmt.Errorf("machine state: %w", ErrTruncated)
		}
		return nil, fmt.Errorf("machine state: %w", ErrBadMagic)
	}
	if len(data) < stateHeaderBytes+4 {
		return nil, fmt.Errorf("machine state: %w: %d bytes", ErrTruncated, len(data))
	}
	le := binary.LittleEndian
	if v := le.Uint32(data[8:]); v != stateVersion {
		return nil, fmt.Errorf("machine state: version %d: %w (this build reads %d)", v, ErrVersion, stateVersion)
	}
	body, sum := data[:len(data)-4], le.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("machine state: %w", ErrChecksum)
	}
	if f := le.Uint32(data[12:]); f != 0 {
		return nil, fmt.Errorf("machine state: flags %#x, not 0: %w", f, ErrMismatch)
	}
	d := decoder{buf: body[16:]}
	ms := &MachineState{}
	ms.Config.VCPUs = int(d.u32())
	switch irqchip := d.u32(); irqchip {
	case 0, 1:
		ms.Config.IRQChip = irqchip == 1
	default:
		return nil, fmt.Errorf("machine state: in-kernel irqchip flag %d, not 0 or 1: %w", irqchip, ErrMismatch)
	}
	ms.Config.MemSize = int64(d.u64())
	n := d.u32()
	if n > maxSections {
		return nil, fmt.Errorf("machine state: %d sections, at most %d: %w", n, maxSections, ErrMismatch)
	}
	ms.Sections = make(map[string]Section, n)
	for i := uint32(0); i < n && d.err == nil; i++ {
		id := string(d.bytes(int(d.u16())))
		version := d.u32()
		data := d.bytes(int(d.u32()))
		switch _, dup := ms.Sections[id]; {
		case d.err != nil:
		case len(id) == 0 || len(id) > maxComponentID:
			return nil, fmt.Errorf("machine state: section %d has an ID of %d bytes (1 to %d): %w", i, len(id), maxComponentID, ErrMismatch)
		case len(data) > maxSectionLen:
			return nil, fmt.Errorf("machine state: section %q of %d bytes, at most %d: %w", id, len(data), maxSectionLen, ErrMismatch)
		case dup:
			return nil, fmt.Errorf("machine state: section %q appears twice: %w", id, ErrMismatch)
		default:
			ms.Sections[id] = Section{Version: version, Data: data}
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("machine state: %w", d.err)
	}
	if len(d.buf) != 0 {
		return nil, fmt.Errorf("machine state: %d bytes after the last section: %w", len(d.buf), ErrMismatch)
	}
	return ms, nil
}

// decoder reads little-endian fields from a buffer, remembering the first
// overrun as ErrTruncated.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.buf) {
		if d.err == nil {
			d.err = fmt.Errorf("%w: need %d bytes, %d left", ErrTruncated, n, len(d.buf))
		}
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) bytes(n int) []byte {
	b := d.take(n)
	return append([]byte(nil), b...)
}

// WriteSnapshot writes the whole machine (state and memory) to w.
// Precondition: the machine is paused or not yet started.
func (m *Machine) WriteSnapshot(w io.Writer) error {
	state, err := m.SaveState()
	if err != nil {
		return err
	}
	return writeSnapshot(w, state, m.mem)
}

func writeSnapshot(w io.Writer, state []byte, mem *GuestMemory) error {
	resident, err := mem.Resident()
	if err != nil {
		return err
	}
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 1<<20)
	le := binary.LittleEndian
	hdr := []byte(snapshotMagic)
	hdr = le.AppendUint32(hdr, snapshotVersion)
	hdr = le.AppendUint32(hdr, 0)
	hdr = le.AppendUint64(hdr, uint64(len(state)))
	bw.Write(hdr)
	bw.Write(state)
	var idx [8]byte
	for p := uint64(0); p < mem.Pages(); p++ {
		if resident[p]&1 == 0 {
			continue
		}
		page := mem.Page(p)
		if isZero(page) {
			continue
		}
		le.PutUint64(idx[:], p)
		bw.Write(idx[:])
		bw.Write(page)
	}
	le.PutUint64(idx[:], endOfPages)
	bw.Write(idx[:])
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	tail := le.AppendUint32(nil, crc.Sum32())
	tail = append(tail, snapshotTrailer...)
	if _, err := w.Write(tail); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	return nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Restore builds a new machine from a snapshot. cfg supplies what a snapshot
// does not hold (console; params are unused: the guest's memory has them);
// the vCPU count, memory size and irqchip come from the snapshot. attach, if
// not nil, adds the devices the saved machine had (in the same order) before
// their state is restored. The machine is returned only if everything
// (checksum included) verified and restored; otherwise it is closed and
// nothing of it remains.
func Restore(r io.Reader, cfg Config, attach func(*Machine) error) (*Machine, error) {
	var m *Machine
	state, err := readSnapshot(r, func(sc StateConfig) (*GuestMemory, error) {
		cfg.VCPUs, cfg.IRQChip, cfg.MemSize = sc.VCPUs, sc.IRQChip, sc.MemSize
		var err error
		if m, err = New(cfg); err != nil {
			return nil, err
		}
		if attach != nil {
			if err := attach(m); err != nil {
				return nil, err
			}
		}
		return m.mem, nil
	})
	if err == nil {
		err = m.RestoreState(state)
	}
	if err != nil {
		if m != nil {
			m.Close()
		}
		return nil, err
	}
	return m, nil
}

// readSnapshot reads a snapshot file: it decodes the machine state, asks
// newMemory for memory of the configuration the state names, fills it, and
// verifies the checksum over the whole file. On error the memory may hold
// part of the snapshot and must be discarded.
func readSnapshot(r io.Reader, newMemory func(StateConfig) (*GuestMemory, error)) ([]byte, error) {
	crc := crc32.New(castagnoli)
	br := &countingReader{r: io.TeeReader(bufio.NewReaderSize(r, 1<<20), crc)}
	hdr := make([]byte, 24)
	if err := br.full(hdr, "header"); err != nil {
		return nil, err
	}
	if string(hdr[:8]) != snapshotMagic {
		return nil, fmt.Errorf("snapshot: %w", ErrBadMagic)
	}
	le := binary.LittleEndian
	if v := le.Uint32(hdr[8:]); v != snapshotVersion {
		return nil, fmt.Errorf("snapshot: version %d: %w (this build reads %d)", v, ErrVersion, snapshotVersion)
	}
	if f := le.Uint32(hdr[12:]); f != 0 {
		return nil, fmt.Errorf("snapshot: flags %#x, not 0: %w", f, ErrMismatch)
	}
	n := le.Uint64(hdr[16:])
	if n > maxStateLen {
		return nil, fmt.Errorf("snapshot: machine state of %d bytes, at most %d: %w", n, maxStateLen, ErrMismatch)
	}
	state := make([]byte, n)
	if err := br.full(state, "machine state"); err != nil {
		return nil, err
	}
	ms, err := DecodeState(state)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if err := ValidateMemSize(ms.Config.MemSize); err != nil {
		return nil, fmt.Errorf("snapshot: %w: %w", ErrMismatch, err)
	}
	mem, err := newMemory(ms.Config)
	if err != nil {
		return nil, err
	}
	var idx [8]byte
	next := uint64(0)
	for {
		if err := br.full(idx[:], "page index"); err != nil {
			return nil, err
		}
		p := le.Uint64(idx[:])
		if p == endOfPages {
			break
		}
		if p < next || p >= mem.Pages() {
			return nil, fmt.Errorf("snapshot: page %d out of order or beyond %d pages: %w", p, mem.Pages(), ErrMismatch)
		}
		next = p + 1
		if err := br.full(mem.host[p*PageSize:(p+1)*PageSize], "page data"); err != nil {
			return nil, err
		}
	}
	want := crc.Sum32()
	tail := make([]byte, 12)
	if _, err := io.ReadFull(br.r, tail); err != nil {
		return nil, fmt.Errorf("snapshot: %w: trailer missing after %d bytes", ErrTruncated, br.n)
	}
	if le.Uint32(tail) != want {
		return nil, fmt.Errorf("snapshot: %w", ErrChecksum)
	}
	if string(tail[4:]) != snapshotTrailer {
		return nil, fmt.Errorf("snapshot: %w: bad trailer", ErrTruncated)
	}
	return state, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) full(p []byte, what string) error {
	k, err := io.ReadFull(c.r, p)
	c.n += int64(k)
	if err != nil {
		return fmt.Errorf("snapshot: %w: %s cut short after %d bytes", ErrTruncated, what, c.n)
	}
	return nil
}

var _ hash.Hash32 = crc32.New(castagnoli)
