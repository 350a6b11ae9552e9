package witness

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The lease block: one 512-byte sector, written whole, little-endian.
//
//	offset size field
//	     0    8 magic "FTCKLEAS"
//	     8    2 format version (leaseVersion)
//	    10    2 owner length in bytes (1..MaxOwnerLen)
//	    12    4 reserved, zero
//	    16    8 generation (>= 1)
//	    24   64 owner, zero-padded
//	    88  420 reserved, zero
//	   508    4 CRC-32C of bytes 0..507
//
// A block of 512 zero bytes has never been written and means "no holder";
// anything else must verify completely or it is corrupt.
const (
	leaseBlockSize = 512
	leaseVersion   = 1
	leaseMagic     = "FTCKLEAS"

	offVersion    = 8
	offOwnerLen   = 10
	offReserved   = 12
	offGeneration = 16
	offOwner      = 24
	offTail       = offOwner + MaxOwnerLen
	offCRC        = leaseBlockSize - 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// encodeLease returns the block recording c. Precondition: c came from
// decide on a validated request, so its owner is 1..MaxOwnerLen bytes.
func encodeLease(c Claim) []byte {
	b := make([]byte, leaseBlockSize)
	copy(b, leaseMagic)
	binary.LittleEndian.PutUint16(b[offVersion:], leaseVersion)
	binary.LittleEndian.PutUint16(b[offOwnerLen:], uint16(len(c.Owner)))
	binary.LittleEndian.PutUint64(b[offGeneration:], c.Generation)
	copy(b[offOwner:offTail], c.Owner)
	binary.LittleEndian.PutUint32(b[offCRC:], crc32.Checksum(b[:offCRC], crcTable))
	return b
}

// decodeLease verifies a block and returns the claim it records. Every
// failure wraps ErrCorrupt and names what was wrong.
func decodeLease(b []byte) (Claim, error) {
	if len(b) != leaseBlockSize {
		return Claim{}, fmt.Errorf("%w: block is %d bytes, want %d", ErrCorrupt, len(b), leaseBlockSize)
	}
	if isZero(b) {
		return Claim{}, nil
	}
	if got := string(b[:len(leaseMagic)]); got != leaseMagic {
		return Claim{}, fmt.Errorf("%w: bad magic %q, want %q (not a lease block?)", ErrCorrupt, got, leaseMagic)
	}
	if want, got := binary.LittleEndian.Uint32(b[offCRC:]), crc32.Checksum(b[:offCRC], crcTable); want != got {
		return Claim{}, fmt.Errorf("%w: checksum %#08x, block says %#08x", ErrCorrupt, got, want)
	}
	if v := binary.LittleEndian.Uint16(b[offVersion:]); v != leaseVersion {
		return Claim{}, fmt.Errorf("%w: format version %d, this build reads %d", ErrCorrupt, v, leaseVersion)
	}
	n := int(binary.LittleEndian.Uint16(b[offOwnerLen:]))
	if n == 0 || n > MaxOwnerLen {
		return Claim{}, fmt.Errorf("%w: owner length %d out of 1..%d", ErrCorrupt, n, MaxOwnerLen)
	}
	if !isZero(b[offReserved:offGeneration]) || !isZero(b[offOwner+n:offCRC]) {
		return Claim{}, fmt.Errorf("%w: reserved bytes are not zero", ErrCorrupt)
	}
	c := Claim{
		Generation: binary.LittleEndian.Uint64(b[offGeneration:]),
		Owner:      string(b[offOwner : offOwner+n]),
	}
	if c.Generation == 0 {
		return Claim{}, fmt.Errorf("%w: generation 0 recorded", ErrCorrupt)
	}
	if err := validateRequest(c.Generation, c.Owner); err != nil {
		return Claim{}, fmt.Errorf("%w: recorded owner: %w", ErrCorrupt, err)
	}
	return c, nil
}

func isZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }
