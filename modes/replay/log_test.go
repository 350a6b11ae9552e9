package replay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"

	"github.com/ftckpt/ftckpt/outbuf"
	"github.com/ftckpt/ftckpt/vmm/machine"
)

// sampleEntries has one entry of every type, with values at the edges of
// their encodings.
func sampleEntries() []Entry {
	return []Entry{
		{Type: EntryExit, Exit: machine.Exit{Kind: machine.ExitPIORead, Addr: 0x3f8, Size: 1, RIP: 0x100004}},
		{Type: EntryValue, Exit: machine.Exit{Size: 1, Data: [8]byte{0x60}}},
		{Type: EntryExit, Exit: machine.Exit{Kind: machine.ExitPIOWrite, Addr: 0x501, Size: 4, RIP: 1<<64 - 1, Data: [8]byte{1, 2, 3, 4}}},
		{Type: EntryExit, Exit: machine.Exit{Kind: machine.ExitMMIOWrite, Addr: 0xfee00000, Size: 8, RIP: 7, Data: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}}},
		{Type: EntryExit, Exit: machine.Exit{Kind: machine.ExitMMIORead, Addr: 1 << 40, Size: 2, RIP: 9}},
		{Type: EntryValue, Exit: machine.Exit{Size: 8, Data: [8]byte{9, 9, 9, 9, 9, 9, 9, 9}}},
		{Type: EntryExit, Exit: machine.Exit{Kind: machine.ExitHalt, RIP: 0x100010}},
		{Type: EntryExit, Exit: machine.Exit{Kind: machine.ExitWindow, RIP: 0x100020}},
		{Type: EntryTime, Time: 0},
		{Type: EntryTime, Time: 1<<64 - 1},
		{Type: EntryPoll, Time: 123456789},
		{Type: EntryFrame, Bytes: bytes.Repeat([]byte{0xab}, 1514)},
		{Type: EntryFrame, Bytes: []byte{}},
		{Type: EntryDiskRead, Off: 512 * 9, Bytes: bytes.Repeat([]byte{1}, 4096)},
		{Type: EntryLanding, Sig: machine.Signature{RIP: 0x100030, Regs: 0xdeadbeefcafef00d, Dirty: 1}},
		{Type: EntryInject},
		{Type: EntryReleased, LSN: 41},
		{Type: EntrySync},
		{Type: EntryOutput, Out: OutputSum{Kind: outbuf.KindNetFrame, Len: 60, Hash: 1<<64 - 1}},
		{Type: EntryOutput, Out: OutputSum{Kind: outbuf.KindDiskWrite, Off: 512 * 7, Len: 4096, Hash: 3}},
		{Type: EntryHeld, Held: true},
		{Type: EntryHeld},
	}
}

func encodeBatch(gen, first uint64, entries []Entry) []byte {
	return (&Batch{Generation: gen, First: first, Entries: entries}).Encode()
}

func TestBatchRoundTrip(t *testing.T) {
	in := sampleEntries()
	buf := encodeBatch(3, 100, in)
	var b Batch
	if err := DecodeBatch(buf, &b); err != nil {
		t.Fatal(err)
	}
	if b.Generation != 3 || b.First != 100 || len(b.Entries) != len(in) {
		t.Fatalf("decoded gen=%d first=%d entries=%d", b.Generation, b.First, len(b.Entries))
	}
	for i := range in {
		want, got := in[i], b.Entries[i]
		if len(want.Bytes) == 0 && len(got.Bytes) == 0 {
			want.Bytes, got.Bytes = nil, nil
		}
		if !reflect.DeepEqual(want, got) {
			t.Errorf("entry %d: got %+v, want %+v", i, got, want)
		}
	}
	// An empty batch is valid too (a keep-alive of the LSN).
	if err := DecodeBatch(encodeBatch(1, 1, nil), &b); err != nil || len(b.Entries) != 0 {
		t.Fatalf("empty batch: %v, %d entries", err, len(b.Entries))
	}
}

// reseal recomputes the checksum after a deliberate edit, so the decoder's
// structural checks (not the CRC) must catch it.
func reseal(buf []byte) []byte {
	n := len(buf) - 4
	binary.LittleEndian.PutUint32(buf[n:], crc32.Checksum(buf[:n], castagnoli))
	return buf
}

func TestBatchRejects(t *testing.T) {
	good := encodeBatch(3, 100, sampleEntries())
	edit := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		buf  []byte
		want error
	}{
		{"empty", nil, ErrBadLog},
		{"truncated", good[:len(good)-1], ErrBadLog},
		{"bit flip", edit(func(b []byte) []byte { b[40] ^= 1; return b }), ErrLogChecksum},
		{"wrong magic", edit(func(b []byte) []byte { b[0] = 'X'; return reseal(b) }), ErrBadLog},
		{"future version", edit(func(b []byte) []byte { b[4] = 2; return reseal(b) }), ErrLogVersion},
		{"reserved set", edit(func(b []byte) []byte { b[6] = 1; return reseal(b) }), ErrBadLog},
		{"generation zero", encodeBatch(0, 1, nil), ErrBadLog},
		{"lsn zero", encodeBatch(1, 0, nil), ErrBadLog},
		{"count too high", edit(func(b []byte) []byte { b[24]++; return reseal(b) }), ErrBadLog},
		{"count lies big", edit(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[24:], 1<<31); return reseal(b) }), ErrBadLog},
		{"count too low", edit(func(b []byte) []byte { b[24]--; return reseal(b) }), ErrBadLog},
		{"unknown entry type", func() []byte {
			b := encodeBatch(1, 1, []Entry{{Type: EntryInject}})
			b[batchHeaderSize] = 0xee
			return reseal(b)
		}(), ErrBadLog},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var b Batch
			if err := DecodeBatch(tc.buf, &b); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestEntryRejects edits single entries into shapes the writer never
// produces.
func TestEntryRejects(t *testing.T) {
	one := func(raw ...byte) []byte {
		var w BatchWriter
		w.Reset(1, 1)
		w.buf = append(w.buf, raw...)
		w.count = 1
		return append([]byte(nil), w.Finish()...)
	}
	cases := map[string][]byte{
		"exit kind kicked":      one(byte(EntryExit), byte(machine.ExitKicked), 0, 0, 0),
		"exit kind zero":        one(byte(EntryExit), 0, 0, 0, 0),
		"pio of size 0":         one(byte(EntryExit), byte(machine.ExitPIORead), 0, 1, 1),
		"pio of size 9":         one(byte(EntryExit), byte(machine.ExitPIOWrite), 9, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9),
		"halt with a size":      one(byte(EntryExit), byte(machine.ExitHalt), 1, 0, 0),
		"halt with an address":  one(byte(EntryExit), byte(machine.ExitHalt), 0, 5, 0),
		"write data truncated":  one(byte(EntryExit), byte(machine.ExitPIOWrite), 4, 1, 1, 1),
		"value of size 0":       one(byte(EntryValue), 0),
		"frame too long":        one(append([]byte{byte(EntryFrame)}, binary.AppendUvarint(nil, MaxFrame+1)...)...),
		"frame truncated":       one(byte(EntryFrame), 10, 1, 2),
		"disk read too long":    one(append([]byte{byte(EntryDiskRead), 0}, binary.AppendUvarint(nil, MaxDiskRead+1)...)...),
		"disk offset negative":  one(append([]byte{byte(EntryDiskRead)}, binary.AppendUvarint(binary.AppendUvarint(nil, 1<<63), 0)...)...),
		"landing truncated":     one(byte(EntryLanding), 1, 2, 3),
		"varint overflow":       one(byte(EntryTime), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01),
		"varint truncated":      one(byte(EntryTime), 0x80),
		"varint not minimal":    one(byte(EntryTime), 0x80, 0x00),
		"trailing after entry":  one(byte(EntryInject), 0),
		"released varint empty": one(byte(EntryReleased)),
		"output kind zero":      one(byte(EntryOutput), 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0),
		"frame output offset":   one(byte(EntryOutput), byte(outbuf.KindNetFrame), 5, 1, 0, 0, 0, 0, 0, 0, 0, 0),
		"output hash truncated": one(byte(EntryOutput), byte(outbuf.KindDiskWrite), 0, 1, 0, 0),
		"held 2":                one(byte(EntryHeld), 2),
		"held truncated":        one(byte(EntryHeld)),
	}
	for name, buf := range cases {
		t.Run(name, func(t *testing.T) {
			var b Batch
			if err := DecodeBatch(buf, &b); !errors.Is(err, ErrBadLog) {
				t.Fatalf("got %v, want ErrBadLog", err)
			}
		})
	}
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeBatch(3, 100, sampleEntries()))
	f.Add(encodeBatch(1, 1, nil))
	f.Fuzz(func(t *testing.T, buf []byte) {
		var b Batch
		if err := DecodeBatch(buf, &b); err != nil {
			if !errors.Is(err, ErrBadLog) {
				t.Fatalf("error %v does not wrap ErrBadLog", err)
			}
			return
		}
		// What decodes re-encodes to the same bytes: the decoder accepts
		// only what the writer produces.
		if again := encodeBatch(b.Generation, b.First, b.Entries); !bytes.Equal(again, buf) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, buf)
		}
	})
}
