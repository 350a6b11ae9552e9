#include "net.h"

static uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static const uint8_t broadcast_mac[ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

uint64_t inet_sum(const uint8_t *p, size_t n, uint64_t sum)
{
	size_t i;

	for (i = 0; i + 1 < n; i += 2)
		sum += get_be16(p + i);
	if (i < n)
		sum += (uint64_t)p[i] << 8;
	return sum;
}

uint16_t inet_fold(uint64_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* udp_pseudo_sum is the sum of the IPv4 pseudo-header of a UDP datagram. */
static uint64_t udp_pseudo_sum(uint32_t src, uint32_t dst, size_t udp_len)
{
	return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + IPPROTO_UDP + udp_len;
}

static int bad_source(uint32_t ip)
{
	return ip == 0 || ip >= 0xE0000000u; /* 0.0.0.0, multicast, class E, broadcast */
}

static enum net_verdict parse_arp(const struct net_if *nif, const uint8_t *a, size_t len,
				  struct net_rx *rx)
{
	if (len < ARP_LEN)
		return NET_DROP_ARP_FORMAT;
	if (get_be16(a) != 1 || get_be16(a + 2) != ETHERTYPE_IPV4 || a[4] != ETH_ALEN || a[5] != 4)
		return NET_DROP_ARP_FORMAT;
	if (get_be16(a + 6) != 1)
		return NET_DROP_ARP_OP;
	if (get_be32(a + 24) != nif->ip)
		return NET_DROP_ARP_TARGET;
	__builtin_memcpy(rx->src_mac, a + 8, ETH_ALEN);
	rx->src_ip = get_be32(a + 14);
	rx->arp = a;
	return NET_ARP_REQUEST;
}

static enum net_verdict parse_ipv4(const struct net_if *nif, const uint8_t *ip, size_t len,
				   int to_broadcast, struct net_rx *rx)
{
	size_t ihl, total, udp_len;
	const uint8_t *udp;

	if (len < IPV4_HLEN || ip[0] >> 4 != 4)
		return NET_DROP_IP_HEADER;
	ihl = (size_t)(ip[0] & 0xf) * 4;
	total = get_be16(ip + 2);
	if (ihl < IPV4_HLEN || ihl > len || total < ihl || total > len)
		return NET_DROP_IP_HEADER;
	if (inet_fold(inet_sum(ip, ihl, 0)) != 0)
		return NET_DROP_IP_CHECKSUM;
	if ((get_be16(ip + 6) & 0x3fff) != 0)
		return NET_DROP_IP_FRAGMENT;
	if (ip[9] != IPPROTO_UDP)
		return NET_DROP_IP_PROTO;
	if (to_broadcast || get_be32(ip + 16) != nif->ip)
		return NET_DROP_IP_DST;
	if (bad_source(get_be32(ip + 12)))
		return NET_DROP_IP_SRC;

	udp = ip + ihl;
	if (total - ihl < UDP_HLEN)
		return NET_DROP_UDP_HEADER;
	udp_len = get_be16(udp + 4);
	if (udp_len < UDP_HLEN || udp_len > total - ihl || get_be16(udp) == 0)
		return NET_DROP_UDP_HEADER;
	if (get_be16(udp + 6) != 0) {
		uint64_t sum = udp_pseudo_sum(get_be32(ip + 12), get_be32(ip + 16), udp_len);
		if (inet_fold(inet_sum(udp, udp_len, sum)) != 0)
			return NET_DROP_UDP_CHECKSUM;
	}
	if (get_be16(udp + 2) != nif->port)
		return NET_DROP_UDP_PORT;
	rx->src_ip = get_be32(ip + 12);
	rx->src_port = get_be16(udp);
	rx->payload = udp + UDP_HLEN;
	rx->payload_len = udp_len - UDP_HLEN;
	return NET_UDP;
}

enum net_verdict net_parse(const struct net_if *nif, const uint8_t *frame, size_t len,
			   struct net_rx *rx)
{
	int to_broadcast;

	__builtin_memset(rx, 0, sizeof(*rx));
	if (len < ETH_HLEN)
		return NET_DROP_SHORT;
	if (len > ETH_MAX_FRAME)
		return NET_DROP_OVERSIZE;
	to_broadcast = __builtin_memcmp(frame, broadcast_mac, ETH_ALEN) == 0;
	if (!to_broadcast && __builtin_memcmp(frame, nif->mac, ETH_ALEN) != 0)
		return NET_DROP_NOT_US;
	__builtin_memcpy(rx->src_mac, frame + ETH_ALEN, ETH_ALEN); /* ARP replaces it by its sender */
	switch (get_be16(frame + 12)) {
	case ETHERTYPE_ARP:
		return parse_arp(nif, frame + ETH_HLEN, len - ETH_HLEN, rx);
	case ETHERTYPE_IPV4:
		return parse_ipv4(nif, frame + ETH_HLEN, len - ETH_HLEN, to_broadcast, rx);
	default:
		return NET_DROP_ETHERTYPE;
	}
}

const char *net_verdict_str(enum net_verdict v)
{
	switch (v) {
	case NET_INVALID:
		return "invalid";
	case NET_ARP_REQUEST:
		return "arp request";
	case NET_UDP:
		return "udp";
	case NET_DROP_SHORT:
		return "short frame";
	case NET_DROP_OVERSIZE:
		return "oversize frame";
	case NET_DROP_NOT_US:
		return "not our mac";
	case NET_DROP_ETHERTYPE:
		return "ethertype";
	case NET_DROP_ARP_FORMAT:
		return "arp format";
	case NET_DROP_ARP_OP:
		return "arp op";
	case NET_DROP_ARP_TARGET:
		return "arp target";
	case NET_DROP_IP_HEADER:
		return "ip header";
	case NET_DROP_IP_CHECKSUM:
		return "ip checksum";
	case NET_DROP_IP_FRAGMENT:
		return "ip fragment";
	case NET_DROP_IP_PROTO:
		return "ip protocol";
	case NET_DROP_IP_DST:
		return "ip destination";
	case NET_DROP_IP_SRC:
		return "ip source";
	case NET_DROP_UDP_HEADER:
		return "udp header";
	case NET_DROP_UDP_CHECKSUM:
		return "udp checksum";
	case NET_DROP_UDP_PORT:
		return "udp port";
	case NET_NR_VERDICTS:
		break;
	}
	return "unknown verdict";
}

static void put_eth(uint8_t *out, const uint8_t *dst, const uint8_t *src, uint16_t type)
{
	__builtin_memcpy(out, dst, ETH_ALEN);
	__builtin_memcpy(out + ETH_ALEN, src, ETH_ALEN);
	put_be16(out + 12, type);
}

size_t net_build_arp_reply(const struct net_if *nif, const struct net_rx *rx, uint8_t *out,
			   size_t cap)
{
	uint8_t *a = out + ETH_HLEN;

	if (cap < ETH_MIN_FRAME || rx->arp == NULL)
		return 0;
	__builtin_memset(out, 0, ETH_MIN_FRAME);
	put_eth(out, rx->src_mac, nif->mac, ETHERTYPE_ARP);
	put_be16(a, 1);
	put_be16(a + 2, ETHERTYPE_IPV4);
	a[4] = ETH_ALEN;
	a[5] = 4;
	put_be16(a + 6, 2);
	__builtin_memcpy(a + 8, nif->mac, ETH_ALEN);
	put_be32(a + 14, nif->ip);
	__builtin_memcpy(a + 18, rx->arp + 8, ETH_ALEN); /* requester's hardware address */
	__builtin_memcpy(a + 24, rx->arp + 14, 4);       /* requester's protocol address */
	return ETH_MIN_FRAME;
}

size_t net_build_udp(const struct net_if *nif, const uint8_t *dst_mac, uint32_t dst_ip,
		     uint16_t dst_port, uint16_t ip_id, const void *payload, size_t n,
		     uint8_t *out, size_t cap)
{
	size_t frame = UDP_FRAME_OVERHEAD + n;
	size_t padded = frame < ETH_MIN_FRAME ? ETH_MIN_FRAME : frame;
	uint8_t *ip = out + ETH_HLEN, *udp = ip + IPV4_HLEN;
	uint16_t csum;

	if (n > ETH_MAX_FRAME - UDP_FRAME_OVERHEAD || padded > cap)
		return 0;
	__builtin_memset(out, 0, padded);
	put_eth(out, dst_mac, nif->mac, ETHERTYPE_IPV4);
	ip[0] = 0x45;
	put_be16(ip + 2, (uint16_t)(IPV4_HLEN + UDP_HLEN + n));
	put_be16(ip + 4, ip_id);
	put_be16(ip + 6, 0x4000); /* DF */
	ip[8] = 64;
	ip[9] = IPPROTO_UDP;
	put_be32(ip + 12, nif->ip);
	put_be32(ip + 16, dst_ip);
	put_be16(ip + 10, inet_fold(inet_sum(ip, IPV4_HLEN, 0)));
	put_be16(udp, nif->port);
	put_be16(udp + 2, dst_port);
	put_be16(udp + 4, (uint16_t)(UDP_HLEN + n));
	__builtin_memcpy(udp + UDP_HLEN, payload, n);
	csum = inet_fold(inet_sum(udp, UDP_HLEN + n, udp_pseudo_sum(nif->ip, dst_ip, UDP_HLEN + n)));
	put_be16(udp + 6, csum == 0 ? 0xffff : csum);
	return padded;
}
