package checkpoint

import (
	"encoding/binary"
	"fmt"
	"math"
)

// DiskWrite is one guest disk write that the primary held in its output
// buffer: Data written at byte offset Off, emitted during Epoch.
type DiskWrite struct {
	Epoch uint64
	Off   int64
	Data  []byte
}

// DiskLog is the disk section of a committing checkpoint: the disk writes
// the backup must keep, because the guest state it commits has seen them
// complete while the disk may not have them yet.
//
// Durable says that every disk write emitted in an epoch ≤ Durable is on
// the disk and flushed (the primary released it and its fdatasync
// returned). Writes are in emission order, each of an epoch after Durable
// and at most the checkpoint's.
//
//   - On an epoch checkpoint (epoch E) the log is incremental: Writes are
//     exactly the writes emitted during E. The backup drops the writes it
//     keeps of epochs ≤ Durable and appends these.
//   - On a sync commit the log is whole: Writes are every write not yet
//     durable, of any epoch up to the commit's. The backup replaces what it
//     keeps with them. A sync commit without the section leaves it nothing.
//
// An epoch checkpoint without the section changes nothing the backup keeps.
// A sync round never carries it.
type DiskLog struct {
	Durable uint64
	Writes  []DiskWrite
}

// Disk section payload (little-endian):
//
//	durable:u64 count:u32
//	count × (epoch:u64 off:u64 n:u32 data[n])
const (
	diskLogHeader = 8 + 4
	diskRecHeader = 8 + 8 + 4

	// MaxDiskLog bounds a disk section's payload (the writes a checkpoint
	// can carry). The primary's output buffer holds far less by default.
	MaxDiskLog = 256 << 20
)

// DiskRecordSize is the size a write of n bytes takes in a disk section.
func DiskRecordSize(n int) uint64 { return diskRecHeader + uint64(n) }

// size is the section payload size of d.
func (d DiskLog) size() uint64 {
	n := uint64(diskLogHeader)
	for _, w := range d.Writes {
		n += diskRecHeader + uint64(len(w.Data))
	}
	return n
}

// check applies the rules of the section to d as carried by a checkpoint
// with header h (see DiskLog). The encoder and the decoder share it.
func (d DiskLog) check(h Header) error {
	if d.Durable > h.Epoch {
		return fmt.Errorf("%w: disk log durable through epoch %d in a checkpoint of epoch %d", ErrBadSection, d.Durable, h.Epoch)
	}
	if len(d.Writes) > math.MaxUint32 {
		return fmt.Errorf("%w: %d disk writes", ErrTooLarge, len(d.Writes))
	}
	last := uint64(0)
	for i, w := range d.Writes {
		switch {
		case len(w.Data) == 0:
			return fmt.Errorf("%w: write %d is empty", ErrBadDiskWrite, i)
		case w.Off < 0 || w.Off > math.MaxInt64-int64(len(w.Data)):
			return fmt.Errorf("%w: write %d of %d bytes at offset %d", ErrBadDiskWrite, i, len(w.Data), w.Off)
		case w.Epoch <= d.Durable:
			return fmt.Errorf("%w: write %d of epoch %d, durable through %d", ErrBadDiskWrite, i, w.Epoch, d.Durable)
		case w.Epoch > h.Epoch:
			return fmt.Errorf("%w: write %d of epoch %d in a checkpoint of epoch %d", ErrBadDiskWrite, i, w.Epoch, h.Epoch)
		case w.Epoch < last:
			return fmt.Errorf("%w: write %d of epoch %d after one of epoch %d", ErrBadDiskWrite, i, w.Epoch, last)
		case h.Kind == KindEpoch && w.Epoch != h.Epoch:
			return fmt.Errorf("%w: write %d of epoch %d in the incremental log of epoch %d", ErrBadDiskWrite, i, w.Epoch, h.Epoch)
		}
		last = w.Epoch
	}
	if n := d.size(); n > MaxDiskLog {
		return fmt.Errorf("%w: disk section of %d bytes (limit %d)", ErrTooLarge, n, MaxDiskLog)
	}
	return nil
}

// appendDiskLog appends d's section payload. Precondition: d.check passed.
func appendDiskLog(b []byte, d DiskLog) []byte {
	b = binary.LittleEndian.AppendUint64(b, d.Durable)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(d.Writes)))
	for _, w := range d.Writes {
		b = binary.LittleEndian.AppendUint64(b, w.Epoch)
		b = binary.LittleEndian.AppendUint64(b, uint64(w.Off))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(w.Data)))
		b = append(b, w.Data...)
	}
	return b
}

// decodeDiskLog parses a disk section into ck.Disk, reusing its storage;
// Data slices alias p. Every length is checked against what remains.
func decodeDiskLog(p []byte, ck *Checkpoint) error {
	if len(p) > MaxDiskLog {
		return fmt.Errorf("%w: disk section of %d bytes (limit %d)", ErrBadSection, len(p), MaxDiskLog)
	}
	if len(p) < diskLogHeader {
		return fmt.Errorf("%w: disk section of %d bytes has no header", ErrBadSection, len(p))
	}
	d := &ck.Disk
	d.Durable = binary.LittleEndian.Uint64(p)
	count := uint64(binary.LittleEndian.Uint32(p[8:]))
	p = p[diskLogHeader:]
	if count > uint64(len(p)/(diskRecHeader+1)) {
		return fmt.Errorf("%w: %d disk writes claimed in %d bytes", ErrBadSection, count, len(p))
	}
	if uint64(cap(d.Writes)) < count {
		d.Writes = make([]DiskWrite, 0, count)
	}
	for i := range count {
		if len(p) < diskRecHeader {
			return fmt.Errorf("%w: write %d: header cut short", ErrBadDiskWrite, i)
		}
		epoch := binary.LittleEndian.Uint64(p)
		off := binary.LittleEndian.Uint64(p[8:])
		n := uint64(binary.LittleEndian.Uint32(p[16:]))
		p = p[diskRecHeader:]
		if n > uint64(len(p)) {
			return fmt.Errorf("%w: write %d of %d bytes with %d bytes left", ErrBadDiskWrite, i, n, len(p))
		}
		if off > math.MaxInt64 {
			return fmt.Errorf("%w: write %d at offset %d, past the largest", ErrBadDiskWrite, i, off)
		}
		d.Writes = append(d.Writes, DiskWrite{Epoch: epoch, Off: int64(off), Data: p[:n:n]})
		p = p[n:]
	}
	if len(p) != 0 {
		return fmt.Errorf("%w: %d bytes after the last disk write", ErrBadSection, len(p))
	}
	ck.HasDisk = true
	return d.check(ck.Header)
}

// keepDisk updates the writes a backup keeps with the disk log of the
// checkpoint it is applying (see DiskLog), copying the data out of the
// checkpoint's buffer.
func (b *Backup) keepDisk() {
	ck := &b.ck
	if ck.Header.Kind == KindSyncCommit {
		clear(b.disk)
		b.disk = b.disk[:0]
	}
	if !ck.HasDisk {
		return
	}
	if ck.Header.Kind == KindEpoch {
		drop := 0
		for drop < len(b.disk) && b.disk[drop].Epoch <= ck.Disk.Durable {
			drop++
		}
		n := copy(b.disk, b.disk[drop:])
		clear(b.disk[n:])
		b.disk = b.disk[:n]
	}
	total := 0
	for _, w := range ck.Disk.Writes {
		total += len(w.Data)
	}
	data := make([]byte, 0, total)
	for _, w := range ck.Disk.Writes {
		start := len(data)
		data = append(data, w.Data...)
		b.disk = append(b.disk, DiskWrite{Epoch: w.Epoch, Off: w.Off, Data: data[start:len(data):len(data)]})
	}
}
