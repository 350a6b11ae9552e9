package replay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"hash/fnv"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// The replay log is a sequence of entries numbered from 1 by their log
// sequence number (LSN). The primary appends them as its guest runs; the
// backup applies them in order. LOG.md describes the wire encoding.

// EntryType says what an entry records. The zero value is invalid.
type EntryType uint8

// Entry types.
const (
	// EntryExit: the guest stopped at a synchronous exit (Exit: kind,
	// address, size, RIP, and for a write its data). The backup checks that
	// its guest stops at the same exit.
	EntryExit EntryType = 1
	// EntryValue: what the read of the preceding EntryExit returned (Exit:
	// Size and Data). The backup checks its device returned the same.
	EntryValue EntryType = 2
	// EntryTime: a reading of the guest clock (Time) by a device.
	EntryTime EntryType = 3
	// EntryPoll: the machine's timers were advanced to Time.
	EntryPoll EntryType = 4
	// EntryFrame: a received network frame (Bytes) was delivered.
	EntryFrame EntryType = 5
	// EntryDiskRead: a disk read at Off returned Bytes.
	EntryDiskRead EntryType = 6
	// EntryLanding: the primary stopped its guest asynchronously at the
	// point Sig names; the backup runs there with RunTo.
	EntryLanding EntryType = 7
	// EntryInject: an interrupt was delivered at this boundary.
	EntryInject EntryType = 8
	// EntryReleased: the primary released every output held at LSN or
	// below. Not guest input: it tells the backup which of its suppressed
	// outputs need not be re-issued at failover.
	EntryReleased EntryType = 9
	// EntrySync: a full checkpoint of the guest at this point follows on the
	// stream, with its epoch equal to this entry's LSN.
	EntrySync EntryType = 10
	// EntryOutput: the guest emitted an output (Out: kind, disk offset,
	// length and a hash of its bytes). Not input: the backup checks that
	// its suppressed output is the same, so a divergence that changes only
	// what the guest says is caught at once.
	EntryOutput EntryType = 11
	// EntryHeld: the operator started (Held) or stopped holding the guest
	// paused (ftckpt ctl pause, resume; machine.OperatorHold), logged at
	// the boundary before the guest would run again. Not input: a backup
	// that goes live keeps the guest held as the last one says (a full
	// checkpoint starts it over at not held).
	EntryHeld EntryType = 12

	numEntryTypes = 13
)

var entryTypeNames = [numEntryTypes]string{"invalid", "exit", "value", "time", "poll", "frame", "disk-read", "landing", "inject", "released", "sync", "output", "held"}

// OutputSum describes an output without its bytes.
type OutputSum struct {
	Kind outbuf.Kind
	Off  int64  // disk writes
	Len  uint64 // bytes
	Hash uint64 // FNV-1a of the bytes
}

// SumOutput describes o.
func SumOutput(o outbuf.Output) OutputSum {
	h := fnv.New64a()
	h.Write(o.Data)
	return OutputSum{Kind: o.Kind, Off: o.Off, Len: uint64(len(o.Data)), Hash: h.Sum64()}
}

func (t EntryType) String() string {
	if t < numEntryTypes {
		return entryTypeNames[t]
	}
	return fmt.Sprintf("entry(%d)", uint8(t))
}

// Entry is one log entry. Which fields are meaningful depends on Type (see
// the constants); the others are zero.
type Entry struct {
	Type  EntryType
	Exit  machine.Exit      // EntryExit; EntryValue uses Size and Data
	Time  uint64            // EntryTime, EntryPoll
	Off   int64             // EntryDiskRead
	Bytes []byte            // EntryFrame, EntryDiskRead
	Sig   machine.Signature // EntryLanding
	LSN   uint64            // EntryReleased
	Out   OutputSum         // EntryOutput
	Held  bool              // EntryHeld
}

func (e Entry) String() string {
	switch e.Type {
	case EntryExit:
		return "exit " + e.Exit.String()
	case EntryValue:
		return fmt.Sprintf("value %x", e.Exit.Data[:e.Exit.Size])
	case EntryTime, EntryPoll:
		return fmt.Sprintf("%v %d", e.Type, e.Time)
	case EntryFrame:
		return fmt.Sprintf("frame of %d bytes", len(e.Bytes))
	case EntryDiskRead:
		return fmt.Sprintf("disk-read of %d bytes at %d", len(e.Bytes), e.Off)
	case EntryLanding:
		return fmt.Sprintf("landing rip=%#x regs=%016x dirty=%016x", e.Sig.RIP, e.Sig.Regs, e.Sig.Dirty)
	case EntryReleased:
		return fmt.Sprintf("released through %d", e.LSN)
	case EntryOutput:
		return fmt.Sprintf("output %v of %d bytes at %d, hash %016x", e.Out.Kind, e.Out.Len, e.Out.Off, e.Out.Hash)
	case EntryHeld:
		if e.Held {
			return "held by the operator"
		}
		return "released by the operator"
	}
	return e.Type.String()
}

// Limits a decoder enforces.
const (
	// MaxFrame is the longest frame an entry carries.
	MaxFrame = 64 << 10
	// MaxDiskRead is the most bytes one disk-read entry carries.
	MaxDiskRead = 4 << 20
	// MaxBatch is the largest encoded batch.
	MaxBatch = 16 << 20
)

// Batch encoding (little-endian; see LOG.md):
//
//	magic "FTRL" | version:u16 | reserved:u16 (0) | generation:u64 |
//	first LSN:u64 | count:u32 | entries | crc32c:u32 of all before it
const (
	batchVersion    = 1
	batchHeaderSize = 4 + 2 + 2 + 8 + 8 + 4
	batchMinSize    = batchHeaderSize + 4
)

var batchMagic = [4]byte{'F', 'T', 'R', 'L'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors of the log decoder. Every decode error wraps ErrBadLog.
var (
	ErrBadLog      = errors.New("malformed replay log")
	ErrLogChecksum = fmt.Errorf("%w: checksum mismatch", ErrBadLog)
	ErrLogVersion  = fmt.Errorf("%w: unsupported version", ErrBadLog)
)

// BatchWriter encodes entries into one batch. The zero value is not
// usable; call Reset first.
type BatchWriter struct {
	buf   []byte
	count uint32
	first uint64
}

// Reset starts a batch of generation gen whose first entry has LSN first,
// reusing the writer's memory.
func (w *BatchWriter) Reset(gen, first uint64) {
	w.buf = append(w.buf[:0], batchMagic[:]...)
	w.buf = binary.LittleEndian.AppendUint16(w.buf, batchVersion)
	w.buf = binary.LittleEndian.AppendUint16(w.buf, 0)
	w.buf = binary.LittleEndian.AppendUint64(w.buf, gen)
	w.buf = binary.LittleEndian.AppendUint64(w.buf, first)
	w.buf = binary.LittleEndian.AppendUint32(w.buf, 0) // count, set by Finish
	w.count, w.first = 0, first
}

// Len is the number of entries added since Reset.
func (w *BatchWriter) Len() int { return int(w.count) }

// Size is the encoded size so far.
func (w *BatchWriter) Size() int { return len(w.buf) + 4 }

// Next is the LSN the next entry added gets.
func (w *BatchWriter) Next() uint64 { return w.first + uint64(w.count) }

// Add appends e. It panics on an entry it could not encode faithfully (an
// engine bug, not an input error).
func (w *BatchWriter) Add(e *Entry) {
	if e.Type == EntryExit || e.Type == EntryValue {
		if s := e.Exit.Size; s > 8 || (s == 0) != (e.Type == EntryExit && !e.Exit.Kind.IsIO()) {
			panic(fmt.Sprintf("replay log: %v of size %d", e, s))
		}
	}
	b := append(w.buf, byte(e.Type))
	switch e.Type {
	case EntryExit:
		x := &e.Exit
		b = append(b, byte(x.Kind), x.Size)
		b = binary.AppendUvarint(b, x.Addr)
		b = binary.AppendUvarint(b, x.RIP)
		if x.Kind == machine.ExitPIOWrite || x.Kind == machine.ExitMMIOWrite {
			b = append(b, x.Data[:x.Size]...)
		}
	case EntryValue:
		b = append(b, e.Exit.Size)
		b = append(b, e.Exit.Data[:e.Exit.Size]...)
	case EntryTime, EntryPoll:
		b = binary.AppendUvarint(b, e.Time)
	case EntryFrame:
		if len(e.Bytes) > MaxFrame {
			panic(fmt.Sprintf("replay log: frame of %d bytes", len(e.Bytes)))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Bytes)))
		b = append(b, e.Bytes...)
	case EntryDiskRead:
		if len(e.Bytes) > MaxDiskRead || e.Off < 0 {
			panic(fmt.Sprintf("replay log: disk read of %d bytes at %d", len(e.Bytes), e.Off))
		}
		b = binary.AppendUvarint(b, uint64(e.Off))
		b = binary.AppendUvarint(b, uint64(len(e.Bytes)))
		b = append(b, e.Bytes...)
	case EntryLanding:
		b = binary.LittleEndian.AppendUint64(b, e.Sig.RIP)
		b = binary.LittleEndian.AppendUint64(b, e.Sig.Regs)
		b = binary.LittleEndian.AppendUint64(b, e.Sig.Dirty)
	case EntryReleased:
		b = binary.AppendUvarint(b, e.LSN)
	case EntryOutput:
		if e.Out.Off < 0 || (e.Out.Kind != outbuf.KindNetFrame && e.Out.Kind != outbuf.KindDiskWrite) || (e.Out.Kind == outbuf.KindNetFrame && e.Out.Off != 0) {
			panic(fmt.Sprintf("replay log: %v", e))
		}
		b = append(b, byte(e.Out.Kind))
		b = binary.AppendUvarint(b, uint64(e.Out.Off))
		b = binary.AppendUvarint(b, e.Out.Len)
		b = binary.LittleEndian.AppendUint64(b, e.Out.Hash)
	case EntryHeld:
		b = append(b, byteOf(e.Held))
	case EntryInject, EntrySync:
	default:
		panic(fmt.Sprintf("replay log: adding %v", e.Type))
	}
	w.buf = b
	w.count++
}

// Finish completes the batch and returns its encoding, valid until the
// next Reset.
func (w *BatchWriter) Finish() []byte {
	binary.LittleEndian.PutUint32(w.buf[batchHeaderSize-4:], w.count)
	w.buf = binary.LittleEndian.AppendUint32(w.buf, crc32.Checksum(w.buf, castagnoli))
	return w.buf
}

// Batch is a decoded batch. Entries' Bytes alias the decoded buffer.
type Batch struct {
	Generation uint64
	First      uint64 // LSN of Entries[0]
	Entries    []Entry
}

// Encode returns b encoded, as a BatchWriter writes it: DecodeBatch's
// inverse, for tools and tests that take a batch apart and put it back.
func (b *Batch) Encode() []byte {
	var w BatchWriter
	w.Reset(b.Generation, b.First)
	for i := range b.Entries {
		w.Add(&b.Entries[i])
	}
	return w.Finish()
}

// DecodeBatch parses and checks one batch. It trusts no length and never
// returns a partial batch: on error, b is unspecified.
func DecodeBatch(buf []byte, b *Batch) error {
	if len(buf) < batchMinSize {
		return fmt.Errorf("%w: batch of %d bytes", ErrBadLog, len(buf))
	}
	if [4]byte(buf[:4]) != batchMagic {
		return fmt.Errorf("%w: bad magic %q", ErrBadLog, buf[:4])
	}
	body, sum := buf[:len(buf)-4], binary.LittleEndian.Uint32(buf[len(buf)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("%w: computed crc32c %#08x, stored %#08x", ErrLogChecksum, got, sum)
	}
	if v := binary.LittleEndian.Uint16(buf[4:]); v != batchVersion {
		return fmt.Errorf("%w: version %d, this build reads %d", ErrLogVersion, v, batchVersion)
	}
	if r := binary.LittleEndian.Uint16(buf[6:]); r != 0 {
		return fmt.Errorf("%w: reserved field %#x", ErrBadLog, r)
	}
	b.Generation = binary.LittleEndian.Uint64(buf[8:])
	b.First = binary.LittleEndian.Uint64(buf[16:])
	count := binary.LittleEndian.Uint32(buf[24:])
	if b.Generation == 0 || b.First == 0 {
		return fmt.Errorf("%w: generation %d, first LSN %d", ErrBadLog, b.Generation, b.First)
	}
	p := body[batchHeaderSize:]
	// Every entry takes at least one byte: a count beyond that is a lie.
	if uint64(count) > uint64(len(p)) || b.First+uint64(count) < b.First {
		return fmt.Errorf("%w: %d entries in %d bytes", ErrBadLog, count, len(p))
	}
	b.Entries = b.Entries[:0]
	for i := uint32(0); i < count; i++ {
		var e Entry
		n, err := decodeEntry(p, &e)
		if err != nil {
			return fmt.Errorf("entry %d (LSN %d): %w", i, b.First+uint64(i), err)
		}
		b.Entries = append(b.Entries, e)
		p = p[n:]
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d bytes after the last entry", ErrBadLog, len(p))
	}
	return nil
}

// decodeEntry parses the entry at the start of p and returns its length.
func decodeEntry(p []byte, e *Entry) (int, error) {
	d := decoder{p: p}
	e.Type = EntryType(d.byte())
	switch e.Type {
	case EntryExit:
		e.Exit.Kind = machine.ExitKind(d.byte())
		e.Exit.Size = d.byte()
		e.Exit.Addr = d.uvarint()
		e.Exit.RIP = d.uvarint()
		if !e.Exit.Kind.Synchronous() {
			d.fail("exit kind %v", e.Exit.Kind)
		}
		if e.Exit.Kind.IsIO() != (e.Exit.Size >= 1 && e.Exit.Size <= 8) || !e.Exit.Kind.IsIO() && (e.Exit.Size != 0 || e.Exit.Addr != 0) {
			d.fail("%v of size %d at %#x", e.Exit.Kind, e.Exit.Size, e.Exit.Addr)
		}
		if e.Exit.Kind == machine.ExitPIOWrite || e.Exit.Kind == machine.ExitMMIOWrite {
			copy(e.Exit.Data[:], d.bytes(int(min(e.Exit.Size, 8))))
		}
	case EntryValue:
		e.Exit.Size = d.byte()
		if e.Exit.Size < 1 || e.Exit.Size > 8 {
			d.fail("value of size %d", e.Exit.Size)
		}
		copy(e.Exit.Data[:], d.bytes(int(min(e.Exit.Size, 8))))
	case EntryTime, EntryPoll:
		e.Time = d.uvarint()
	case EntryFrame:
		n := d.uvarint()
		if n > MaxFrame {
			d.fail("frame of %d bytes", n)
		}
		e.Bytes = d.bytes(int(min(n, MaxFrame)))
	case EntryDiskRead:
		off, n := d.uvarint(), d.uvarint()
		if off > 1<<62 || n > MaxDiskRead {
			d.fail("disk read of %d bytes at %d", n, off)
		}
		e.Off = int64(min(off, 1<<62))
		e.Bytes = d.bytes(int(min(n, MaxDiskRead)))
	case EntryLanding:
		e.Sig.RIP, e.Sig.Regs, e.Sig.Dirty = d.u64(), d.u64(), d.u64()
	case EntryReleased:
		e.LSN = d.uvarint()
	case EntryOutput:
		e.Out.Kind = outbuf.Kind(d.byte())
		off := d.uvarint()
		e.Out.Len, e.Out.Hash = d.uvarint(), d.u64()
		if off > 1<<62 || e.Out.Kind != outbuf.KindNetFrame && e.Out.Kind != outbuf.KindDiskWrite || e.Out.Kind == outbuf.KindNetFrame && off != 0 {
			d.fail("output of kind %d at %d", uint8(e.Out.Kind), off)
		}
		e.Out.Off = int64(min(off, 1<<62))
	case EntryHeld:
		switch v := d.byte(); v {
		case 0, 1:
			e.Held = v == 1
		default:
			d.fail("held %d", v)
		}
	case EntryInject, EntrySync:
	default:
		d.fail("entry type %d", uint8(e.Type))
	}
	return d.n, d.err
}

// byteOf is 1 for true, 0 for false.
func byteOf(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// decoder reads fields from a byte slice, remembering the first error; after
// one, every read returns zero.
type decoder struct {
	p   []byte
	n   int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadLog, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.p)-d.n {
		d.fail("truncated: %d bytes wanted, %d left", n, len(d.p)-d.n)
		return nil
	}
	b := d.p[d.n : d.n+n : d.n+n]
	d.n += n
	return b
}

func (d *decoder) byte() byte {
	if b := d.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.bytes(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.p[d.n:])
	if n <= 0 || n > 1 && d.p[d.n+n-1] == 0 {
		d.fail("bad varint") // overflowing, truncated or not minimal
		return 0
	}
	d.n += n
	return v
}
