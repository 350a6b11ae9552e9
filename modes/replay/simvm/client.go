package simvm

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// The kv guest's protocol, that of guests/pure/kvstore.h on bare frames
// (no Ethernet, IP or UDP headers): each received frame is one request,
//
//	SET <key> <value>   ->  <seq> OK
//	GET <key>           ->  <seq> VALUE <value>  |  <seq> NOTFOUND
//	INCR <key>          ->  <seq> VALUE <n>      (a missing key counts from 0)
//	anything else       ->  <seq> ERR <why>
//
// and gets exactly one reply frame. <seq> numbers the replies from 1 since
// boot. Fields are separated by one space; one trailing "\n" or "\r\n" is
// ignored. A key is 1 to 32 bytes without spaces, a value 1 to 64 bytes
// (spaces allowed); requests above 128 bytes get "ERR too long". INCR
// counts in unsigned decimal up to INT64_MAX ("ERR not a number", "ERR
// overflow"). At most 63 keys ("ERR full"), never deleted. Unlike the C
// guest, bytes are not checked for being printable and "-12" is not a
// number. Frames arriving while the guest's 8 receive slots are full are
// dropped by the device; a client retries, as over UDP.
//
// The table survives restarts through the disk: sectors 0 to 15 hold it
// (the first 8 bytes "KVDB\x01\0\0\0"), written after every persist_every
// updates (SET or INCR; default 4) and read at boot. The Env must serve
// reads of those sectors on a blank disk (zeros).

// KVRequest builds a request frame: cmd and args joined by spaces, as in
// KVRequest("SET", "k", "v").
func KVRequest(cmd string, args ...string) []byte {
	return []byte(strings.Join(append([]string{cmd}, args...), " "))
}

// KVReply is a reply of the kv guest.
type KVReply struct {
	Seq uint64
	// Status is "OK", "VALUE", "NOTFOUND" or "ERR".
	Status string
	// Value is VALUE's value or ERR's reason.
	Value string
}

// ParseKVReply parses a reply frame of the kv guest.
func ParseKVReply(frame []byte) (KVReply, error) {
	seq, rest, ok := strings.Cut(string(frame), " ")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 {
		return KVReply{}, fmt.Errorf("kv reply %q: no sequence number", frame)
	}
	r := KVReply{Seq: n}
	r.Status, r.Value, _ = strings.Cut(rest, " ")
	switch {
	case (r.Status == "OK" || r.Status == "NOTFOUND") && r.Value == "" && !strings.HasSuffix(rest, " "),
		(r.Status == "VALUE" || r.Status == "ERR") && r.Value != "":
		return r, nil
	}
	return KVReply{}, fmt.Errorf("kv reply %q: malformed", frame)
}

// TickFrame is a frame the tick guest sends.
type TickFrame struct {
	Ticks uint64 // ticks counted
	Clock uint64 // the clock (Env.Now) read after the tick's work
}

// tickFrameSize is "TICK", 4 zero bytes and two little-endian uint64s.
const tickFrameSize = 24

// ParseTickFrame parses a frame of the tick guest.
func ParseTickFrame(frame []byte) (TickFrame, error) {
	if len(frame) != tickFrameSize || string(frame[:8]) != "TICK\x00\x00\x00\x00" {
		return TickFrame{}, fmt.Errorf("%d-byte frame %q: not a tick frame", len(frame), frame[:min(len(frame), 8)])
	}
	return TickFrame{Ticks: binary.LittleEndian.Uint64(frame[8:]), Clock: binary.LittleEndian.Uint64(frame[16:])}, nil
}
