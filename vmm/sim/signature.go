package sim

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The signature hash: 64-bit FNV-1a taken a 64-bit little-endian word at a
// time instead of a byte, each step followed by an xor-shift fold so that
// high bits reach the low ones. It is deterministic across processes and
// hosts, which the replay needs: the primary and the backup compare it.
const (
	hashOffset = 14695981039346656037
	hashPrime  = 1099511628211
)

func mix(h, w uint64) uint64 {
	h = (h ^ w) * hashPrime
	return h ^ h>>32
}

// markWrite records a write of n > 0 bytes at addr, inside RAM.
func (m *Machine) markWrite(addr, n uint64) {
	for p := addr / PageSize; p <= (addr+n-1)/PageSize; p++ {
		bit := uint64(1) << (p % 64)
		m.dirty[p/64] |= bit
		m.stale[p/64] |= bit
		m.written[p/64] |= bit
	}
}

// Written implements machine.Stepper: exactly the pages written since the
// previous Written (every write goes through markWrite).
func (m *Machine) Harvest(dst *machine.Bitmap) error {
	w := dst.Words()
	if dst.Len() != uint64(len(m.mem)/PageSize) || len(w) != len(m.written) {
		return fmt.Errorf("written pages: a bitmap of %d pages for a guest of %d", dst.Len(), len(m.mem)/PageSize)
	}
	for i, x := range m.written {
		w[i] |= x
	}
	clear(m.written)
	return nil
}

// Mark implements machine.Stepper.
func (m *Machine) Mark() error {
	clear(m.dirty)
	return nil
}

// Signature implements machine.Stepper. Regs hashes r0..r15, pc, the flags
// and the sti shadow (which decides whether an interrupt can land here).
// Dirty hashes, in page order, each page written since the last Mark as
// (page number, hash of its contents); a page's contents hash is cached
// until the page is written again.
func (m *Machine) Signature() (machine.Signature, error) {
	return machine.Signature{RIP: m.cpu.PC, Regs: m.regsHash(), Dirty: m.dirtyHash()}, nil
}

// Matches implements machine.Stepper.
func (m *Machine) Matches(sig machine.Signature) (bool, error) {
	if m.cpu.PC != sig.RIP || m.regsHash() != sig.Regs {
		return false, nil
	}
	return m.dirtyHash() == sig.Dirty, nil
}

func (m *Machine) regsHash() uint64 {
	c := &m.cpu
	h := uint64(hashOffset)
	for _, r := range c.R[:16] {
		h = mix(h, r)
	}
	h = mix(h, c.PC)
	h = mix(h, c.Flags)
	if c.Shadow {
		h = mix(h, 1)
	} else {
		h = mix(h, 0)
	}
	return h
}

func (m *Machine) dirtyHash() uint64 {
	h := uint64(hashOffset)
	for i, w := range m.dirty {
		for w != 0 {
			bit := w & -w
			w &^= bit
			p := uint64(i)*64 + uint64(bits.TrailingZeros64(bit))
			if m.stale[i]&bit != 0 {
				m.pageHash[p] = pageHash(m.mem[p*PageSize : (p+1)*PageSize])
				m.stale[i] &^= bit
			}
			h = mix(mix(h, p), m.pageHash[p])
		}
	}
	return h
}

func pageHash(page []byte) uint64 {
	h := uint64(hashOffset)
	for i := 0; i+8 <= len(page); i += 8 {
		h = mix(h, binary.LittleEndian.Uint64(page[i:]))
	}
	return h
}
