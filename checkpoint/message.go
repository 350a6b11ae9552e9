package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Framing on a stream transport (see PROTOCOL.md). Every message is
//
//	length:u32 (payload bytes)  version:u16  type:u16  payload[length]
//
// little-endian. The zero MsgType is invalid.

// ProtocolVersion is the wire protocol this package speaks. Version 3
// runs inside mutual TLS 1.3 (PROTOCOL.md), unless both sides chose plain
// TCP (--insecure); version 4 adds a backup's image hashes (ImageHashes),
// which a primary of version 4 may wait for; version 5 its memory's
// (MemoryHashes) and KEPT pages; version 6 names the sync hashes are for
// (a later sync asks again: FlagSendHashes) and the checkpoint a Resync
// rejected.
const ProtocolVersion uint16 = 6

// ALPN names the protocol and its version in the TLS handshake, so that a
// peer of another version is refused there, before any frame.
const ALPN = "ftckpt/6"

const frameHeaderSize = 8

// MsgType says what a message carries.
type MsgType uint16

// Message types.
const (
	MsgHello      MsgType = 1 // Hello: first message each way
	MsgCheckpoint MsgType = 2 // a checkpoint, primary to backup
	MsgAck        MsgType = 3 // Ack: backup committed (generation, epoch)
	MsgHeartbeat  MsgType = 4 // Heartbeat: liveness, either way
	MsgResync     MsgType = 5 // Resync: backup asks for a full sync
	MsgLog        MsgType = 6 // a batch of replay-log entries (modes/replay/LOG.md)
	MsgRounds     MsgType = 7 // Rounds: backup applied sync rounds, for pacing a pre-copy
	// MsgRefused ends a connection with the reason, from a side that will
	// not speak with this peer (a TLS host to one in plain TCP). Reader.Next
	// never returns it: it returns an error wrapping ErrPeerRefused.
	MsgRefused MsgType = 8
	// MsgImageHashes: a backup's disk image by range hashes, asked for by
	// the primary's Hello or a sync's first message (ImageHashes).
	MsgImageHashes MsgType = 9
	// MsgMemoryHashes: a backup's guest memory by range hashes, asked for
	// by the primary's Hello and offered by the backup's, or asked for by
	// a sync's first message (MemoryHashes).
	MsgMemoryHashes MsgType = 10

	numMsgTypes = 11
)

func (t MsgType) String() string {
	switch t {
	case MsgHello:
		return "hello"
	case MsgCheckpoint:
		return "checkpoint"
	case MsgAck:
		return "ack"
	case MsgHeartbeat:
		return "heartbeat"
	case MsgResync:
		return "resync"
	case MsgLog:
		return "log"
	case MsgRounds:
		return "rounds"
	case MsgRefused:
		return "refused"
	case MsgImageHashes:
		return "image hashes"
	case MsgMemoryHashes:
		return "memory hashes"
	}
	return fmt.Sprintf("msgtype(%d)", uint16(t))
}

// Framing errors.
var (
	ErrProtocolVersion = errors.New("unsupported protocol version")
	ErrBadMessage      = errors.New("malformed message")
	ErrMessageTooLarge = errors.New("message too large")
	// ErrPeerRefused is the peer's refusal (MsgRefused), with its reason.
	ErrPeerRefused = errors.New("the peer refused the connection")
)

// Fixed payload sizes and bounds.
const (
	helloFixed = 4 + 1 + 1 + 8 + 8 + 8 + 2
	// MaxHelloMachine bounds Hello.Machine.
	MaxHelloMachine = 256
	ackSize         = 16
	heartbeatSize   = 8
	roundsSize      = 24
	// MaxResyncDetail bounds the human-readable text in a Resync.
	MaxResyncDetail = 512
	resyncFixed     = 1 + 16 + 1 + 16 + 2
	// MaxRefusal bounds the text of a Refused message.
	MaxRefusal = 512
)

// MaxLogMessage bounds a replay-log batch; its encoding is the replay
// mode's (modes/replay/LOG.md), framed like every other message.
const MaxLogMessage = 16 << 20

// DefaultMaxCheckpoint is the default bound on a checkpoint message.
const DefaultMaxCheckpoint = 1 << 30

// Role says which side sent a Hello. The zero Role is invalid.
type Role uint8

// Roles.
const (
	RolePrimary Role = 1
	RoleBackup  Role = 2
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleBackup:
		return "backup"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

var helloMagic = [4]byte{'F', 'T', 'C', 'H'}

// Hello's flags byte.
const (
	helloCommitted         = 1 << 0
	helloWantImageHashes   = 1 << 1
	helloWantMemoryHashes  = 1 << 2
	helloSendsMemoryHashes = 1 << 3
	helloFlags             = helloCommitted | helloWantImageHashes | helloWantMemoryHashes | helloSendsMemoryHashes
)

// Hello opens a connection in each direction. The backup reports the
// state it holds committed; the primary reports its cache Base. The
// primary continues with epoch checkpoints only if the backup's committed
// (Generation, Epoch) equals its Base; otherwise it starts a full sync.
//
// WantImageHashes, from a primary, asks the backup for its disk image's
// range hashes (ImageHashes), sent after its Hello. WantMemoryHashes, from
// a primary, asks for its memory's (MemoryHashes), and SendsMemoryHashes,
// from a backup, offers them: they come only if both are set.
//
// Machine describes what both sides' machines must agree on besides
// memory (the mode, the kind of machine, vCPUs, devices), in words a user
// can read in the error a mismatch gives; its format is the caller's.
type Hello struct {
	Role              Role
	MemPages          uint64
	Committed         bool // Generation and Epoch are meaningful
	WantImageHashes   bool // a primary's only
	WantMemoryHashes  bool // a primary's only
	SendsMemoryHashes bool // a backup's only
	Generation, Epoch uint64
	Machine           string // at most MaxHelloMachine bytes
}

// Append appends h's payload to b.
func (h Hello) Append(b []byte) []byte {
	b = append(b, helloMagic[:]...)
	flags := byte(0)
	if h.Committed {
		flags |= helloCommitted
	}
	if h.WantImageHashes {
		flags |= helloWantImageHashes
	}
	if h.WantMemoryHashes {
		flags |= helloWantMemoryHashes
	}
	if h.SendsMemoryHashes {
		flags |= helloSendsMemoryHashes
	}
	b = append(b, byte(h.Role), flags)
	b = binary.LittleEndian.AppendUint64(b, h.MemPages)
	b = binary.LittleEndian.AppendUint64(b, h.Generation)
	b = binary.LittleEndian.AppendUint64(b, h.Epoch)
	m := h.Machine[:min(len(h.Machine), MaxHelloMachine)]
	b = binary.LittleEndian.AppendUint16(b, uint16(len(m)))
	return append(b, m...)
}

// DecodeHello parses a Hello payload.
func DecodeHello(p []byte) (Hello, error) {
	if len(p) < helloFixed || [4]byte(p[:4]) != helloMagic {
		return Hello{}, fmt.Errorf("decode hello: %w: %d bytes", ErrBadMessage, len(p))
	}
	if n := int(binary.LittleEndian.Uint16(p[30:])); n > MaxHelloMachine || len(p) != helloFixed+n {
		return Hello{}, fmt.Errorf("decode hello: %w: %d bytes with a %d-byte machine description", ErrBadMessage, len(p), n)
	}
	h := Hello{
		Role:              Role(p[4]),
		Committed:         p[5]&helloCommitted != 0,
		WantImageHashes:   p[5]&helloWantImageHashes != 0,
		WantMemoryHashes:  p[5]&helloWantMemoryHashes != 0,
		SendsMemoryHashes: p[5]&helloSendsMemoryHashes != 0,
		MemPages:          binary.LittleEndian.Uint64(p[6:]),
		Generation:        binary.LittleEndian.Uint64(p[14:]),
		Epoch:             binary.LittleEndian.Uint64(p[22:]),
		Machine:           string(p[helloFixed:]),
	}
	switch {
	case h.Role != RolePrimary && h.Role != RoleBackup:
		return Hello{}, fmt.Errorf("decode hello: %w: role %d", ErrBadMessage, p[4])
	case p[5]&^helloFlags != 0:
		return Hello{}, fmt.Errorf("decode hello: %w: flags %#x", ErrBadMessage, p[5])
	case (h.WantImageHashes || h.WantMemoryHashes) && h.Role != RolePrimary:
		return Hello{}, fmt.Errorf("decode hello: %w: a %v asking for range hashes", ErrBadMessage, h.Role)
	case h.SendsMemoryHashes && h.Role != RoleBackup:
		return Hello{}, fmt.Errorf("decode hello: %w: a %v offering memory hashes", ErrBadMessage, h.Role)
	case h.MemPages == 0 || h.MemPages > MaxMemPages:
		return Hello{}, fmt.Errorf("decode hello: %w: %d pages", ErrBadMemSize, h.MemPages)
	}
	return h, nil
}

// Ack tells the primary the backup committed (Generation, Epoch): the
// outputs of that epoch may be released.
type Ack struct{ Generation, Epoch uint64 }

// Append appends a's payload to b.
func (a Ack) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, a.Generation)
	return binary.LittleEndian.AppendUint64(b, a.Epoch)
}

// DecodeAck parses an Ack payload.
func DecodeAck(p []byte) (Ack, error) {
	if len(p) != ackSize {
		return Ack{}, fmt.Errorf("decode ack: %w: %d bytes, want %d", ErrBadMessage, len(p), ackSize)
	}
	a := Ack{binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:])}
	if a.Generation == 0 {
		return Ack{}, fmt.Errorf("decode ack: %w: generation 0", ErrBadMessage)
	}
	return a, nil
}

// Heartbeat shows the sender is alive; Seq rises by one per heartbeat.
type Heartbeat struct{ Seq uint64 }

// Append appends hb's payload to b.
func (hb Heartbeat) Append(b []byte) []byte { return binary.LittleEndian.AppendUint64(b, hb.Seq) }

// DecodeHeartbeat parses a Heartbeat payload.
func DecodeHeartbeat(p []byte) (Heartbeat, error) {
	if len(p) != heartbeatSize {
		return Heartbeat{}, fmt.Errorf("decode heartbeat: %w: %d bytes, want %d", ErrBadMessage, len(p), heartbeatSize)
	}
	return Heartbeat{binary.LittleEndian.Uint64(p)}, nil
}

// Rounds tells the primary that the backup has applied Count sync rounds
// of the full sync (Generation, Epoch) in progress. A primary pre-copying
// while its guest runs sends rounds only a few ahead of it, so that when
// it commits the sync the backup is not far behind (outputs then wait for
// it).
type Rounds struct{ Generation, Epoch, Count uint64 }

// Append appends r's payload to b.
func (r Rounds) Append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, r.Generation)
	b = binary.LittleEndian.AppendUint64(b, r.Epoch)
	return binary.LittleEndian.AppendUint64(b, r.Count)
}

// DecodeRounds parses a Rounds payload.
func DecodeRounds(p []byte) (Rounds, error) {
	if len(p) != roundsSize {
		return Rounds{}, fmt.Errorf("decode rounds: %w: %d bytes, want %d", ErrBadMessage, len(p), roundsSize)
	}
	r := Rounds{binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:]), binary.LittleEndian.Uint64(p[16:])}
	if r.Generation == 0 || r.Count == 0 {
		return Rounds{}, fmt.Errorf("decode rounds: %w: generation %d, count %d", ErrBadMessage, r.Generation, r.Count)
	}
	return r, nil
}

// ResyncReason says why a backup asks for a full sync. Zero is invalid.
type ResyncReason uint8

// Resync reasons.
const (
	ResyncRejected   ResyncReason = 1 // a checkpoint was rejected
	ResyncGap        ResyncReason = 2 // the stream does not follow what the backup holds
	ResyncDivergence ResyncReason = 3 // the backup's state disagrees with the primary's
)

// Resync asks the primary for a full sync. Generation and Epoch are the
// backup's committed state (zero if none); Rejected is the checkpoint
// rejected (reason ResyncRejected, if its header could be read; zero
// otherwise), by which a primary tells a rejected sync from a rejected
// checkpoint that a sync under way makes moot; Detail says what went
// wrong.
type Resync struct {
	Reason            ResyncReason
	Generation, Epoch uint64
	Rejected          CheckpointName
	Detail            string
}

// CheckpointName names a checkpoint by its header's kind, generation and
// epoch. The zero CheckpointName names none.
type CheckpointName struct {
	Kind              Kind
	Generation, Epoch uint64
}

func (n CheckpointName) String() string {
	return fmt.Sprintf("%v gen=%d epoch=%d", n.Kind, n.Generation, n.Epoch)
}

// Name is the name of the checkpoint h heads.
func (h Header) Name() CheckpointName {
	return CheckpointName{Kind: h.Kind, Generation: h.Generation, Epoch: h.Epoch}
}

// Append appends r's payload to b; Detail is cut to MaxResyncDetail bytes.
func (r Resync) Append(b []byte) []byte {
	d := r.Detail[:min(len(r.Detail), MaxResyncDetail)]
	b = append(b, byte(r.Reason))
	b = binary.LittleEndian.AppendUint64(b, r.Generation)
	b = binary.LittleEndian.AppendUint64(b, r.Epoch)
	b = append(b, byte(r.Rejected.Kind))
	b = binary.LittleEndian.AppendUint64(b, r.Rejected.Generation)
	b = binary.LittleEndian.AppendUint64(b, r.Rejected.Epoch)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(d)))
	return append(b, d...)
}

// DecodeResync parses a Resync payload.
func DecodeResync(p []byte) (Resync, error) {
	if len(p) < resyncFixed {
		return Resync{}, fmt.Errorf("decode resync: %w: %d bytes", ErrBadMessage, len(p))
	}
	r := Resync{
		Reason:     ResyncReason(p[0]),
		Generation: binary.LittleEndian.Uint64(p[1:]),
		Epoch:      binary.LittleEndian.Uint64(p[9:]),
		Rejected: CheckpointName{Kind: Kind(p[17]),
			Generation: binary.LittleEndian.Uint64(p[18:]), Epoch: binary.LittleEndian.Uint64(p[26:])},
	}
	n := int(binary.LittleEndian.Uint16(p[34:]))
	switch {
	case r.Reason < ResyncRejected || r.Reason > ResyncDivergence:
		return Resync{}, fmt.Errorf("decode resync: %w: reason %d", ErrBadMessage, p[0])
	case r.Rejected != CheckpointName{} && (r.Reason != ResyncRejected || !r.Rejected.Kind.valid()):
		return Resync{}, fmt.Errorf("decode resync: %w: names checkpoint %v (reason %d)", ErrBadMessage, r.Rejected, p[0])
	case n > MaxResyncDetail || n != len(p)-resyncFixed:
		return Resync{}, fmt.Errorf("decode resync: %w: detail length %d in %d bytes", ErrBadMessage, n, len(p))
	}
	r.Detail = string(p[resyncFixed:])
	return r, nil
}

// WriteMessage writes one framed message. For a TCP connection the header
// and payload go out in one writev; to any other writer (a TLS connection)
// a small message goes out in one Write, so in one TLS record, and a large
// one in two. Use from one goroutine per writer.
func WriteMessage(w io.Writer, t MsgType, payload []byte) error {
	if t == 0 || t >= numMsgTypes {
		return fmt.Errorf("write message: %w: type %d", ErrBadMessage, t)
	}
	if uint64(len(payload)) > 0xFFFFFFFF {
		return fmt.Errorf("write %v: %w: %d bytes", t, ErrMessageTooLarge, len(payload))
	}
	var h [frameHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(payload)))
	binary.LittleEndian.PutUint16(h[4:], ProtocolVersion)
	binary.LittleEndian.PutUint16(h[6:], uint16(t))
	var err error
	if _, tcp := w.(*net.TCPConn); !tcp && len(payload) <= smallMessage {
		buf := make([]byte, 0, frameHeaderSize+len(payload))
		_, err = w.Write(append(append(buf, h[:]...), payload...))
	} else {
		bufs := net.Buffers{h[:], payload}
		_, err = bufs.WriteTo(w)
	}
	if err != nil {
		return fmt.Errorf("write %v (%d bytes): %w", t, len(payload), err)
	}
	return nil
}

// smallMessage is the largest payload WriteMessage copies to write with
// its header in one Write (a TLS record holds 16 KiB).
const smallMessage = 16<<10 - frameHeaderSize

// WriteRefusal ends a connection's stream with a Refused message: the
// peer's Reader returns an error wrapping ErrPeerRefused with reason (cut
// to MaxRefusal bytes). A peer of another protocol version reads an error
// naming both versions instead.
func WriteRefusal(w io.Writer, reason string) error {
	return WriteMessage(w, MsgRefused, []byte(reason[:min(len(reason), MaxRefusal)]))
}

// SniffFrame says whether a stream that begins with b (at least a frame
// header's 8 bytes) is this protocol in the clear — a frame of some
// version opening with a Hello or a Refused message — and which version.
// A TLS host uses it to tell a peer in plain TCP (an older ftckpt, or one
// run with --insecure) what it is.
func SniffFrame(b []byte) (version uint16, ok bool) {
	if len(b) < frameHeaderSize {
		return 0, false
	}
	n := binary.LittleEndian.Uint32(b)
	version = binary.LittleEndian.Uint16(b[4:])
	switch MsgType(binary.LittleEndian.Uint16(b[6:])) {
	case MsgHello:
		return version, version > 0 && n >= helloFixed && n <= helloFixed+MaxHelloMachine
	case MsgRefused:
		return version, version >= 3 && n <= MaxRefusal
	}
	return 0, false
}

// Reader reads framed messages, refusing any whose length exceeds the
// bound for its type before reading it, and growing its buffer only as
// bytes actually arrive (a lying length cannot make it allocate more than
// was sent plus one chunk). Use from one goroutine.
type Reader struct {
	r             io.Reader
	maxCheckpoint int
	hdr           [frameHeaderSize]byte
	buf           []byte
}

// readChunk is how much the Reader grows its buffer ahead of the data.
const readChunk = 1 << 20

// growFor returns b with room for step more bytes: b itself if it has
// it, else b's bytes in a new buffer twice as large (at least len+step, at
// most limit), moved by AppendChunked (a 64 MiB message grew the buffer by
// moves of 32 MiB).
func growFor(b []byte, step, limit int) []byte {
	if cap(b)-len(b) >= step {
		return b
	}
	return AppendChunked(make([]byte, 0, max(min(2*cap(b), limit), len(b)+step)), b)
}

// NewReader returns a Reader on r accepting checkpoints of up to
// maxCheckpoint bytes (DefaultMaxCheckpoint if <= 0).
func NewReader(r io.Reader, maxCheckpoint int) *Reader {
	if maxCheckpoint <= 0 {
		maxCheckpoint = DefaultMaxCheckpoint
	}
	return &Reader{r: r, maxCheckpoint: maxCheckpoint}
}

// Next reads the next message. The payload is valid until the next call.
// A clean end of stream between messages is io.EOF; a stream that ends
// inside a message is io.ErrUnexpectedEOF.
func (r *Reader) Next() (MsgType, []byte, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, io.EOF
		}
		return 0, nil, fmt.Errorf("read message header: %w", err)
	}
	n := uint64(binary.LittleEndian.Uint32(r.hdr[0:]))
	v := binary.LittleEndian.Uint16(r.hdr[4:])
	t := MsgType(binary.LittleEndian.Uint16(r.hdr[6:]))
	if v != ProtocolVersion {
		return 0, nil, fmt.Errorf("read message: %w: the peer speaks version %d, this build %d (run the same ftckpt release on both hosts)", ErrProtocolVersion, v, ProtocolVersion)
	}
	var lo, hi uint64
	switch t {
	case MsgHello:
		lo, hi = helloFixed, helloFixed+MaxHelloMachine
	case MsgCheckpoint:
		lo, hi = headerSize+trailerSize, uint64(r.maxCheckpoint)
	case MsgAck:
		lo, hi = ackSize, ackSize
	case MsgHeartbeat:
		lo, hi = heartbeatSize, heartbeatSize
	case MsgResync:
		lo, hi = resyncFixed, resyncFixed+MaxResyncDetail
	case MsgLog:
		lo, hi = 1, MaxLogMessage
	case MsgRounds:
		lo, hi = roundsSize, roundsSize
	case MsgRefused:
		lo, hi = 0, MaxRefusal
	case MsgImageHashes, MsgMemoryHashes:
		lo, hi = rangeHashesFixed+32, rangeHashesFixed+MaxRangeHashes*32
	default:
		return 0, nil, fmt.Errorf("read message: %w: type %d", ErrBadMessage, uint16(t))
	}
	if n > hi {
		return 0, nil, fmt.Errorf("read %v: %w: %d bytes, limit %d", t, ErrMessageTooLarge, n, hi)
	}
	if n < lo {
		return 0, nil, fmt.Errorf("read %v: %w: %d bytes, at least %d needed", t, ErrBadMessage, n, lo)
	}
	r.buf = r.buf[:0]
	for uint64(len(r.buf)) < n {
		step := min(n-uint64(len(r.buf)), readChunk)
		r.buf = growFor(r.buf, int(step), int(n))
		m, err := io.ReadFull(r.r, r.buf[len(r.buf):len(r.buf)+int(step)])
		r.buf = r.buf[:len(r.buf)+m]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, fmt.Errorf("read %v payload (%d of %d bytes): %w", t, len(r.buf), n, err)
		}
	}
	if t == MsgRefused {
		return 0, nil, fmt.Errorf("%w: %q", ErrPeerRefused, r.buf)
	}
	return t, r.buf, nil
}
