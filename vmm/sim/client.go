package sim

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// The network's frames carry their peer, as UDP datagrams would: every
// frame a guest receives begins with the sender's address, and every frame
// it sends with the receiver's, NetAddrSize bytes (an IPv4 address and a
// port, big-endian), then the payload. The kv guest answers to the address
// of the request; the tick guest sends to the zero address (its host's
// choice of receiver). A host's front therefore needs no table of clients,
// and a backup's front delivers the replies its guest owes to clients it
// never heard from.
const NetAddrSize = 6

// Addressed returns a frame carrying payload to or from addr; the zero
// AddrPort is the zero address. addr must be IPv4 (or IPv4-mapped) if set.
func Addressed(addr netip.AddrPort, payload []byte) []byte {
	f := make([]byte, NetAddrSize, NetAddrSize+len(payload))
	if addr.IsValid() {
		ip := addr.Addr().Unmap().As4()
		copy(f, ip[:])
		binary.BigEndian.PutUint16(f[4:], addr.Port())
	}
	return append(f, payload...)
}

// FrameAddress splits frame into its peer's address (the zero AddrPort for
// the zero address) and its payload, which aliases frame.
func FrameAddress(frame []byte) (netip.AddrPort, []byte, error) {
	if len(frame) < NetAddrSize {
		return netip.AddrPort{}, nil, fmt.Errorf("%d-byte frame: no address", len(frame))
	}
	var addr netip.AddrPort
	if ip := [4]byte(frame[:4]); ip != [4]byte{} || frame[4] != 0 || frame[5] != 0 {
		addr = netip.AddrPortFrom(netip.AddrFrom4(ip), binary.BigEndian.Uint16(frame[4:]))
	}
	return addr, frame[NetAddrSize:], nil
}

// The kv guest's protocol, that of guests/pure/kvstore.h on the payloads
// of frames (no Ethernet, IP or UDP headers): each received frame is one
// request,
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

// KVRequest builds a request frame from the zero address: cmd and args
// joined by spaces, as in KVRequest("SET", "k", "v").
func KVRequest(cmd string, args ...string) []byte {
	return Addressed(netip.AddrPort{}, []byte(strings.Join(append([]string{cmd}, args...), " ")))
}

// KVReply is a reply of the kv guest.
type KVReply struct {
	Seq uint64
	// Status is "OK", "VALUE", "NOTFOUND" or "ERR".
	Status string
	// Value is VALUE's value or ERR's reason.
	Value string
}

// ParseKVReply parses a reply frame of the kv guest, whatever its address.
func ParseKVReply(frame []byte) (KVReply, error) {
	_, payload, err := FrameAddress(frame)
	if err != nil {
		return KVReply{}, fmt.Errorf("kv reply: %w", err)
	}
	return ParseKVPayload(payload)
}

// ParseKVPayload parses the payload of a reply frame: the datagram a UDP
// client of the host's front receives.
func ParseKVPayload(payload []byte) (KVReply, error) {
	seq, rest, ok := strings.Cut(string(payload), " ")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 {
		return KVReply{}, fmt.Errorf("kv reply %q: no sequence number", payload)
	}
	r := KVReply{Seq: n}
	r.Status, r.Value, _ = strings.Cut(rest, " ")
	switch {
	case (r.Status == "OK" || r.Status == "NOTFOUND") && r.Value == "" && !strings.HasSuffix(rest, " "),
		(r.Status == "VALUE" || r.Status == "ERR") && r.Value != "":
		return r, nil
	}
	return KVReply{}, fmt.Errorf("kv reply %q: malformed", payload)
}

// TickFrame is a frame the tick guest sends.
type TickFrame struct {
	Ticks uint64 // ticks counted
	Clock uint64 // the clock (Env.Now) read after the tick's work
}

// tickFrameSize is the zero address, "TICK", 4 zero bytes and two
// little-endian uint64s.
const tickFrameSize = NetAddrSize + 24

// ParseTickFrame parses a frame of the tick guest.
func ParseTickFrame(frame []byte) (TickFrame, error) {
	addr, p, err := FrameAddress(frame)
	if err != nil || addr.IsValid() || len(frame) != tickFrameSize || string(p[:8]) != "TICK\x00\x00\x00\x00" {
		return TickFrame{}, fmt.Errorf("%d-byte frame %q: not a tick frame", len(frame), frame[:min(len(frame), NetAddrSize+8)])
	}
	return TickFrame{Ticks: binary.LittleEndian.Uint64(p[8:]), Clock: binary.LittleEndian.Uint64(p[16:])}, nil
}
