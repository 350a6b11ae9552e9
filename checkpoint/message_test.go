package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"net"
	"reflect"
	"strings"
	"testing"
)

func frame(n uint32, version uint16, t MsgType, payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, n)
	b = binary.LittleEndian.AppendUint16(b, version)
	b = binary.LittleEndian.AppendUint16(b, uint16(t))
	return append(b, payload...)
}

func TestMessageRoundTrip(t *testing.T) {
	h := newHarness(t, 8, 41)
	ck := h.encode(KindSyncCommit, FlagSyncStart, 1, allPages(8), true)
	hello := Hello{Role: RoleBackup, MemPages: 8, Committed: true, SendsMemoryHashes: true, Generation: 4, Epoch: 9, Machine: "checkpoint kvm vcpus=4"}
	asks := Hello{Role: RolePrimary, MemPages: 8, WantImageHashes: true, WantMemoryHashes: true, Machine: "checkpoint kvm, mirrored disk"}
	image := ImageHashes{For: HashesFor{4, 11}, DiskSize: 5*DiskHashRange + 7, First: 2, Sums: [][32]byte{{1, 2}, {3}, {4: 5}, {31: 6}}}
	memory := MemoryHashes{MemPages: 3*MemHashRangePages + 1, First: 3, Sums: [][32]byte{{7, 8}}}
	ack := Ack{4, 9}
	hb := Heartbeat{77}
	rs := Resync{Reason: ResyncDivergence, Generation: 4, Epoch: 9, Detail: "exit 12 at rip 0x1000 differs"}
	rejected := Resync{Reason: ResyncRejected, Generation: 4, Epoch: 9, Rejected: CheckpointName{KindSyncCommit, 4, 12}, Detail: "checksum"}
	rounds := Rounds{4, 10, 33}

	// Over a real connection, so WriteMessage's writev path is used.
	a, b := net.Pipe()
	go func() {
		defer a.Close()
		for _, m := range []struct {
			t MsgType
			p []byte
		}{{MsgHello, hello.Append(nil)}, {MsgHello, asks.Append(nil)}, {MsgImageHashes, image.Append(nil)}, {MsgMemoryHashes, memory.Append(nil)}, {MsgCheckpoint, ck}, {MsgAck, ack.Append(nil)}, {MsgHeartbeat, hb.Append(nil)}, {MsgResync, rs.Append(nil)}, {MsgResync, rejected.Append(nil)}, {MsgRounds, rounds.Append(nil)}} {
			if err := WriteMessage(a, m.t, m.p); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	r := NewReader(b, 0)
	next := func(want MsgType) []byte {
		t.Helper()
		typ, p, err := r.Next()
		if err != nil || typ != want {
			t.Fatalf("Next: %v %v, want %v", typ, err, want)
		}
		return p
	}
	if got, err := DecodeHello(next(MsgHello)); err != nil || got != hello {
		t.Fatalf("hello %+v %v", got, err)
	}
	if got, err := DecodeHello(next(MsgHello)); err != nil || got != asks {
		t.Fatalf("hello asking for image hashes %+v %v", got, err)
	}
	if got, err := DecodeImageHashes(next(MsgImageHashes)); err != nil || !reflect.DeepEqual(got, image) {
		t.Fatalf("image hashes %+v %v", got, err)
	}
	if got, err := DecodeMemoryHashes(next(MsgMemoryHashes)); err != nil || !reflect.DeepEqual(got, memory) {
		t.Fatalf("memory hashes %+v %v", got, err)
	}
	if p := next(MsgCheckpoint); !bytes.Equal(p, ck) {
		t.Fatal("checkpoint payload differs")
	}
	if got, err := DecodeAck(next(MsgAck)); err != nil || got != ack {
		t.Fatalf("ack %+v %v", got, err)
	}
	if got, err := DecodeHeartbeat(next(MsgHeartbeat)); err != nil || got != hb {
		t.Fatalf("heartbeat %+v %v", got, err)
	}
	for _, want := range []Resync{rs, rejected} {
		if got, err := DecodeResync(next(MsgResync)); err != nil || got != want {
			t.Fatalf("resync %+v %v, want %+v", got, err, want)
		}
	}
	if got, err := DecodeRounds(next(MsgRounds)); err != nil || got != rounds {
		t.Fatalf("rounds %+v %v", got, err)
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last message: %v, want io.EOF", err)
	}
}

// failingReader fails the test if more than n bytes are read from it.
type failingReader struct {
	tb testing.TB
	r  io.Reader
	n  int
}

func (f *failingReader) Read(p []byte) (int, error) {
	m, err := f.r.Read(p)
	f.n -= m
	if f.n < 0 {
		f.tb.Fatal("reader read past the frame header of a refused message")
	}
	return m, err
}

func TestReaderRejects(t *testing.T) {
	cases := []struct {
		name   string
		stream []byte
		want   error
	}{
		{"future version", frame(16, ProtocolVersion+1, MsgAck, make([]byte, 16)), ErrProtocolVersion},
		{"past version", frame(16, ProtocolVersion-1, MsgAck, make([]byte, 16)), ErrProtocolVersion},
		{"type zero", frame(16, ProtocolVersion, 0, make([]byte, 16)), ErrBadMessage},
		{"type unknown", frame(16, ProtocolVersion, numMsgTypes, make([]byte, 16)), ErrBadMessage},
		{"ack too long", frame(17, ProtocolVersion, MsgAck, make([]byte, 17)), ErrMessageTooLarge},
		{"ack too short", frame(15, ProtocolVersion, MsgAck, make([]byte, 15)), ErrBadMessage},
		{"hello too long", frame(helloFixed+MaxHelloMachine+1, ProtocolVersion, MsgHello, nil), ErrMessageTooLarge},
		{"resync too long", frame(resyncFixed+MaxResyncDetail+1, ProtocolVersion, MsgResync, nil), ErrMessageTooLarge},
		{"rounds too long", frame(roundsSize+1, ProtocolVersion, MsgRounds, nil), ErrMessageTooLarge},
		{"rounds too short", frame(roundsSize-1, ProtocolVersion, MsgRounds, make([]byte, roundsSize-1)), ErrBadMessage},
		{"image hashes too long", frame(rangeHashesFixed+MaxRangeHashes*32+1, ProtocolVersion, MsgImageHashes, nil), ErrMessageTooLarge},
		{"image hashes without one", frame(rangeHashesFixed, ProtocolVersion, MsgImageHashes, make([]byte, rangeHashesFixed)), ErrBadMessage},
		{"log too long", frame(MaxLogMessage+1, ProtocolVersion, MsgLog, nil), ErrMessageTooLarge},
		{"log empty", frame(0, ProtocolVersion, MsgLog, nil), ErrBadMessage},
		{"checkpoint over limit", frame(1<<20+1, ProtocolVersion, MsgCheckpoint, nil), ErrMessageTooLarge},
		{"checkpoint under header", frame(10, ProtocolVersion, MsgCheckpoint, nil), ErrBadMessage},
		{"truncated header", frame(16, ProtocolVersion, MsgAck, nil)[:5], io.ErrUnexpectedEOF},
		{"truncated payload", frame(16, ProtocolVersion, MsgAck, make([]byte, 9)), io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			limit := len(tc.stream)
			if errors.Is(tc.want, ErrMessageTooLarge) || errors.Is(tc.want, ErrProtocolVersion) {
				limit = frameHeaderSize
			}
			r := NewReader(&failingReader{tb: t, r: bytes.NewReader(tc.stream), n: limit}, 1<<20)
			_, _, err := r.Next()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Next: %v, want %v", err, tc.want)
			}
			t.Log(err)
		})
	}
}

// A length that lies (large, but within the limit) on a stream that then
// ends costs at most one read chunk of memory, not the claimed size.
func TestReaderGrowsWithData(t *testing.T) {
	r := NewReader(bytes.NewReader(frame(900<<20, ProtocolVersion, MsgCheckpoint, make([]byte, 100))), 1<<30)
	if _, _, err := r.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Next: %v", err)
	}
	if cap(r.buf) > 2*readChunk {
		t.Fatalf("reader allocated %d bytes for a stream of 100", cap(r.buf))
	}
}

func TestPayloadDecodersReject(t *testing.T) {
	good := Hello{Role: RolePrimary, MemPages: 8}.Append(nil)
	goodImage := ImageHashes{DiskSize: 1 << 20, First: 1, Sums: make([][32]byte, 3)}.Append(nil)
	if _, err := DecodeImageHashes(goodImage); err != nil {
		t.Fatalf("the image hashes the cases change: %v", err)
	}
	mod := func(b []byte, i int, v byte) []byte { c := bytes.Clone(b); c[i] = v; return c }
	cases := []struct {
		name string
		err  error
	}{
		{"hello magic", func() error { _, err := DecodeHello(mod(good, 0, 'X')); return err }()},
		{"hello role zero", func() error { _, err := DecodeHello(mod(good, 4, 0)); return err }()},
		{"hello unknown flag", func() error { _, err := DecodeHello(mod(good, 5, 16)); return err }()},
		{"hello: a backup asks for memory hashes", func() error {
			_, err := DecodeHello(Hello{Role: RoleBackup, MemPages: 8, WantMemoryHashes: true}.Append(nil))
			return err
		}()},
		{"hello: a primary offers memory hashes", func() error {
			_, err := DecodeHello(Hello{Role: RolePrimary, MemPages: 8, SendsMemoryHashes: true}.Append(nil))
			return err
		}()},
		{"memory hashes past the memory", func() error {
			_, err := DecodeMemoryHashes(MemoryHashes{MemPages: 3 * MemHashRangePages, First: 2, Sums: make([][32]byte, 2)}.Append(nil))
			return err
		}()},
		{"memory hashes of no memory", func() error {
			_, err := DecodeMemoryHashes(MemoryHashes{Sums: make([][32]byte, 1)}.Append(nil))
			return err
		}()},
		{"hello: a backup asks for image hashes", func() error {
			_, err := DecodeHello(Hello{Role: RoleBackup, MemPages: 8, WantImageHashes: true}.Append(nil))
			return err
		}()},
		{"hello zero memory", func() error { _, err := DecodeHello(Hello{Role: RoleBackup}.Append(nil)); return err }()},
		{"hello machine length", func() error { _, err := DecodeHello(mod(good, 30, 1)); return err }()},
		{"hello machine too long", func() error {
			long := Hello{Role: RolePrimary, MemPages: 8, Machine: strings.Repeat("x", MaxHelloMachine)}.Append(nil)
			long[30]++ // n = MaxHelloMachine+1, and as many bytes follow
			_, err := DecodeHello(append(long, 'x'))
			return err
		}()},
		{"ack generation zero", func() error { _, err := DecodeAck(Ack{0, 5}.Append(nil)); return err }()},
		{"heartbeat short", func() error { _, err := DecodeHeartbeat([]byte{1}); return err }()},
		{"rounds generation zero", func() error { _, err := DecodeRounds(Rounds{0, 1, 1}.Append(nil)); return err }()},
		{"rounds count zero", func() error { _, err := DecodeRounds(Rounds{1, 1, 0}.Append(nil)); return err }()},
		{"rounds short", func() error { _, err := DecodeRounds(make([]byte, 23)); return err }()},
		{"resync reason zero", func() error { _, err := DecodeResync(Resync{Reason: 0}.Append(nil)); return err }()},
		{"resync names a checkpoint of no kind", func() error {
			_, err := DecodeResync(Resync{Reason: ResyncRejected, Rejected: CheckpointName{Generation: 1, Epoch: 2}}.Append(nil))
			return err
		}()},
		{"resync names a checkpoint but rejected none", func() error {
			_, err := DecodeResync(Resync{Reason: ResyncGap, Rejected: CheckpointName{KindEpoch, 1, 2}}.Append(nil))
			return err
		}()},
		{"hashes for an epoch of generation 0", func() error {
			_, err := DecodeMemoryHashes(MemoryHashes{For: HashesFor{Epoch: 3}, MemPages: 64, Sums: make([][32]byte, 1)}.Append(nil))
			return err
		}()},
		{"image hashes algorithm", func() error { _, err := DecodeImageHashes(mod(goodImage, 0, 2)); return err }()},
		{"image hashes of no disk", func() error {
			_, err := DecodeImageHashes(ImageHashes{DiskSize: 0, Sums: make([][32]byte, 1)}.Append(nil))
			return err
		}()},
		{"image hashes none", func() error { _, err := DecodeImageHashes(ImageHashes{DiskSize: 1 << 20}.Append(nil)); return err }()},
		{"image hashes past the disk", func() error {
			_, err := DecodeImageHashes(ImageHashes{DiskSize: 1 << 20, First: 3, Sums: make([][32]byte, 2)}.Append(nil))
			return err
		}()},
		{"image hashes past the bound", func() error {
			_, err := DecodeImageHashes(ImageHashes{DiskSize: 1 << 40, Sums: make([][32]byte, MaxRangeHashes+1)}.Append(nil))
			return err
		}()},
		{"image hashes count lies", func() error { _, err := DecodeImageHashes(goodImage[:len(goodImage)-1]); return err }()},
		{"resync detail length lies", func() error {
			p := Resync{Reason: ResyncGap, Generation: 1, Epoch: 1, Detail: "abc"}.Append(nil)
			return func() error { _, err := DecodeResync(p[:len(p)-1]); return err }()
		}()},
	}
	for _, c := range cases {
		if c.err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	if err := WriteMessage(io.Discard, 0, nil); !errors.Is(err, ErrBadMessage) {
		t.Errorf("writing type 0: %v", err)
	}
}

// growFor keeps the bytes it moves, a chunk at a time past CopyChunk,
// leaves room for the step, doubles up to the limit, and moves nothing
// that has room already.
func TestGrowFor(t *testing.T) {
	b := make([]byte, 0, 16)
	if got := growFor(b, 16, 100); &got[:1][0] != &b[:1][0] {
		t.Fatal("growFor moved a buffer that had room")
	}
	r := rand.New(rand.NewSource(2))
	b = make([]byte, 2*CopyChunk+5)
	r.Read(b)
	want := bytes.Clone(b)
	got := growFor(b, 10, 5*CopyChunk)
	if !bytes.Equal(got, want) || cap(got) != 4*CopyChunk+10 {
		t.Fatalf("grew %d bytes to a buffer of %d (cap %d), bytes kept: %v; want cap %d", len(want), len(got), cap(got), bytes.Equal(got, want), 4*CopyChunk+10)
	}
	if got := growFor(make([]byte, 10), 5, 12); cap(got) != 15 {
		t.Fatalf("a limit below len+step: cap %d, want 15", cap(got))
	}
	if got := growFor(make([]byte, 10), 5, 18); cap(got) != 18 {
		t.Fatalf("doubling past the limit: cap %d, want the limit, 18", cap(got))
	}
}
