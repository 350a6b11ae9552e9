package vmm

import (
	"encoding/binary"
	"hash/crc64"

	"github.com/bobuhiro11/gokvm/kvm"
)

// RFLAGS bits a debugger owns: the trap flag of a single step and the
// resume flag around breakpoints. HashRegs leaves them out, so a point
// reached by a kick and the same point reached by a breakpoint hash alike.
const (
	rflagsTF = 1 << 8
	rflagsRF = 1 << 16
)

var crc64Table = crc64.MakeTable(crc64.ECMA)

// HashRegs is a 64-bit hash (CRC-64/ECMA) of the sixteen general-purpose
// registers, RIP and RFLAGS without TF and RF, in kvm_regs order. It is the
// same on every host and every run.
func HashRegs(r *kvm.Regs) uint64 {
	le := binary.LittleEndian
	b := make([]byte, 0, 18*8)
	for _, v := range [...]uint64{
		r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RSP, r.RBP,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15,
		r.RIP, r.RFLAGS &^ (rflagsTF | rflagsRF),
	} {
		b = le.AppendUint64(b, v)
	}
	return crc64.Checksum(b, crc64Table)
}
