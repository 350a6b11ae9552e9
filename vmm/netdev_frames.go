package vmm

import (
	"encoding/binary"
	"errors"
)

// Ethernet, ARP, IPv4 and UDP: what the network backends need to build
// frames for the guest and to read its replies. No length in a frame is
// trusted.
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	ethHdrLen     = 14
	arpLen        = 28
	ipv4HdrLen    = 20
	udpHdrLen     = 8
	ipProtoUDP    = 17
	arpOpRequest  = 1
	arpOpReply    = 2

	// MaxUDPPayload is the largest datagram a backend carries in one
	// frame: MaxFrame less the Ethernet, IPv4 and UDP headers.
	MaxUDPPayload = MaxFrame - ethHdrLen - ipv4HdrLen - udpHdrLen
)

var broadcastMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// GratuitousARP returns an ARP announcement (a request for ip from ip, to
// broadcast) that makes switches and neighbours learn that ip is at mac, as
// QEMU sends after a migration; a backup sends it on a tap after failover.
func GratuitousARP(mac [6]byte, ip [4]byte) []byte {
	return arpFrame(arpOpRequest, mac, ip, broadcastMAC, [6]byte{}, ip)
}

// arpFrame builds an Ethernet/ARP frame from sha/spa, with target tha/tpa,
// sent to dst, padded to the 60-byte minimum.
func arpFrame(op uint16, sha [6]byte, spa [4]byte, dst, tha [6]byte, tpa [4]byte) []byte {
	f := make([]byte, 60)
	copy(f[0:], dst[:])
	copy(f[6:], sha[:])
	binary.BigEndian.PutUint16(f[12:], etherTypeARP)
	a := f[ethHdrLen:]
	binary.BigEndian.PutUint16(a[0:], 1) // Ethernet
	binary.BigEndian.PutUint16(a[2:], etherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:], sha[:])
	copy(a[14:], spa[:])
	copy(a[18:], tha[:])
	copy(a[24:], tpa[:])
	return f
}

// udpEndpoint is one end of a UDP flow as the frames name it.
type udpEndpoint struct {
	mac  [6]byte
	ip   [4]byte
	port uint16
}

// udpFrame appends to dst an Ethernet/IPv4/UDP frame from src to to with
// payload (len ≤ MaxUDPPayload), IPv4 id id, DF, TTL 64 and both checksums.
func udpFrame(dst []byte, src, to udpEndpoint, id uint16, payload []byte) []byte {
	n := ethHdrLen + ipv4HdrLen + udpHdrLen + len(payload)
	out := append(dst, make([]byte, n)...)
	f := out[len(dst):]
	copy(f[0:], to.mac[:])
	copy(f[6:], src.mac[:])
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv4)
	ip := f[ethHdrLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipv4HdrLen+udpHdrLen+len(payload)))
	binary.BigEndian.PutUint16(ip[4:], id)
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = ipProtoUDP
	copy(ip[12:], src.ip[:])
	copy(ip[16:], to.ip[:])
	binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip[:ipv4HdrLen], 0))
	u := ip[ipv4HdrLen:]
	binary.BigEndian.PutUint16(u[0:], src.port)
	binary.BigEndian.PutUint16(u[2:], to.port)
	binary.BigEndian.PutUint16(u[4:], uint16(udpHdrLen+len(payload)))
	copy(u[udpHdrLen:], payload)
	sum := udpChecksum(src.ip, to.ip, u)
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], sum)
	return out
}

// inetSum adds b as big-endian 16-bit words to sum (RFC 1071).
func inetSum(b []byte, sum uint32) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// inetChecksum folds and complements the sum of b (and an initial sum).
func inetChecksum(b []byte, initial uint32) uint16 {
	sum := inetSum(b, initial)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// udpChecksum is the UDP checksum of segment u (checksum field included as
// it stands) with the IPv4 pseudo-header.
func udpChecksum(src, dst [4]byte, u []byte) uint16 {
	var pseudo [12]byte
	copy(pseudo[0:], src[:])
	copy(pseudo[4:], dst[:])
	pseudo[9] = ipProtoUDP
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(u)))
	return inetChecksum(u, inetSum(pseudo[:], 0))
}

// Why a guest frame was dropped.
var (
	errFrameShort     = errors.New("shorter than its headers")
	errFrameEtherType = errors.New("neither IPv4 nor ARP")
	errFrameARP       = errors.New("not an Ethernet/IPv4 ARP request")
	errFrameIPHeader  = errors.New("bad IPv4 header (version, length, fragment)")
	errFrameIPSum     = errors.New("bad IPv4 header checksum")
	errFrameNotUDP    = errors.New("not UDP")
	errFrameUDP       = errors.New("bad UDP length or checksum")
)

// parsedUDP is a UDP datagram read from a frame.
type parsedUDP struct {
	src, dst udpEndpoint
	payload  []byte // points into the frame
}

// parseARPRequest reads an ARP request: sender and target protocol
// addresses and the sender's MAC.
func parseARPRequest(f []byte) (sha [6]byte, spa, tpa [4]byte, err error) {
	if len(f) < ethHdrLen+arpLen {
		return sha, spa, tpa, errFrameShort
	}
	a := f[ethHdrLen:]
	if binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != etherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:]) != arpOpRequest {
		return sha, spa, tpa, errFrameARP
	}
	copy(sha[:], a[8:])
	copy(spa[:], a[14:])
	copy(tpa[:], a[24:])
	return sha, spa, tpa, nil
}

// parseUDP reads an Ethernet/IPv4/UDP frame, checking the IPv4 header and
// its checksum, refusing fragments, and checking the UDP length and (if
// non-zero) checksum. Bytes after the IPv4 total length (padding) are
// ignored.
func parseUDP(f []byte) (parsedUDP, error) {
	var p parsedUDP
	if len(f) < ethHdrLen {
		return p, errFrameShort
	}
	if binary.BigEndian.Uint16(f[12:]) != etherTypeIPv4 {
		return p, errFrameEtherType
	}
	ip := f[ethHdrLen:]
	if len(ip) < ipv4HdrLen {
		return p, errFrameShort
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ip[0]>>4 != 4 || ihl < ipv4HdrLen || total < ihl || total > len(ip) ||
		binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return p, errFrameIPHeader
	}
	if inetChecksum(ip[:ihl], 0) != 0 {
		return p, errFrameIPSum
	}
	if ip[9] != ipProtoUDP {
		return p, errFrameNotUDP
	}
	copy(p.src.mac[:], f[6:])
	copy(p.dst.mac[:], f[0:])
	copy(p.src.ip[:], ip[12:])
	copy(p.dst.ip[:], ip[16:])
	u := ip[ihl:total]
	if len(u) < udpHdrLen {
		return p, errFrameUDP
	}
	ulen := int(binary.BigEndian.Uint16(u[4:]))
	if ulen < udpHdrLen || ulen > len(u) {
		return p, errFrameUDP
	}
	u = u[:ulen]
	if binary.BigEndian.Uint16(u[6:]) != 0 && udpChecksum(p.src.ip, p.dst.ip, u) != 0 {
		return p, errFrameUDP
	}
	p.src.port = binary.BigEndian.Uint16(u[0:])
	p.dst.port = binary.BigEndian.Uint16(u[2:])
	p.payload = u[udpHdrLen:]
	return p, nil
}
