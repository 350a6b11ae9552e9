/*
 * Ethernet, ARP, IPv4 and UDP: parsing received frames and building
 * replies, for a host with one MAC and one IPv4 address.
 *
 * Pure code: compiles freestanding and on the host. A frame is a byte
 * buffer and its length; no length field inside it is trusted, and every
 * rejection has a named verdict so tests can check why a frame was
 * dropped.
 */
#ifndef GUESTS_NET_H
#define GUESTS_NET_H

#include <stddef.h>
#include <stdint.h>

#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_MIN_FRAME 60   /* without FCS; shorter replies are zero-padded */
#define ETH_MAX_FRAME 1514 /* without FCS; longer frames are dropped */
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ARP_LEN 28
#define IPV4_HLEN 20
#define IPPROTO_UDP 17
#define UDP_HLEN 8
#define ARP_FRAME_LEN (ETH_HLEN + ARP_LEN)
#define UDP_FRAME_OVERHEAD (ETH_HLEN + IPV4_HLEN + UDP_HLEN)

/* The local interface. ip is in host order (10.0.2.15 == 0x0A00020F). */
struct net_if {
	uint8_t mac[ETH_ALEN];
	uint32_t ip;
	uint16_t port; /* the UDP port served */
};

/* What net_parse decided. Zero is invalid; every drop has its reason. */
enum net_verdict {
	NET_INVALID = 0,
	NET_ARP_REQUEST,      /* an ARP request for our address: answer it */
	NET_UDP,              /* a valid datagram to our address and port */
	NET_DROP_SHORT,       /* shorter than an Ethernet header */
	NET_DROP_OVERSIZE,    /* longer than ETH_MAX_FRAME */
	NET_DROP_NOT_US,      /* Ethernet destination neither ours nor broadcast */
	NET_DROP_ETHERTYPE,   /* neither IPv4 nor ARP */
	NET_DROP_ARP_FORMAT,  /* truncated, or not Ethernet/IPv4 ARP */
	NET_DROP_ARP_OP,      /* not a request */
	NET_DROP_ARP_TARGET,  /* a request for another address */
	NET_DROP_IP_HEADER,   /* truncated, bad version/IHL/total length */
	NET_DROP_IP_CHECKSUM, /* header checksum does not verify */
	NET_DROP_IP_FRAGMENT, /* a fragment (MF set or offset != 0) */
	NET_DROP_IP_PROTO,    /* not UDP */
	NET_DROP_IP_DST,      /* to another address, or a broadcast frame */
	NET_DROP_IP_SRC,      /* from 0.0.0.0, broadcast or multicast */
	NET_DROP_UDP_HEADER,  /* truncated, bad length, or source port 0 */
	NET_DROP_UDP_CHECKSUM,/* a non-zero checksum that does not verify */
	NET_DROP_UDP_PORT,    /* to another port */
	NET_NR_VERDICTS,
};

/* A parsed frame: pointers into the frame given to net_parse. */
struct net_rx {
	uint8_t src_mac[ETH_ALEN];
	uint32_t src_ip;          /* ARP sender or IPv4 source, host order */
	uint16_t src_port;        /* NET_UDP only */
	const uint8_t *arp;       /* NET_ARP_REQUEST only: the ARP payload */
	const uint8_t *payload;   /* NET_UDP only */
	size_t payload_len;
};

/* net_parse classifies one received frame (without FCS). */
enum net_verdict net_parse(const struct net_if *nif, const uint8_t *frame, size_t len,
			   struct net_rx *rx);

/* net_verdict_str names a verdict ("ip checksum", ...). */
const char *net_verdict_str(enum net_verdict v);

/* net_build_arp_reply writes the reply to a NET_ARP_REQUEST into out and
 * returns its length (ETH_MIN_FRAME), or 0 if cap is too small. */
size_t net_build_arp_reply(const struct net_if *nif, const struct net_rx *rx, uint8_t *out,
			   size_t cap);

/* net_build_udp writes an Ethernet/IPv4/UDP frame from nif (source port
 * nif->port) to dst_mac/dst_ip/dst_port carrying n bytes of payload, with
 * IPv4 id ip_id, DF set, TTL 64 and both checksums filled in. Returns the
 * frame length (at least ETH_MIN_FRAME), or 0 if it does not fit in cap or
 * exceeds ETH_MAX_FRAME. */
size_t net_build_udp(const struct net_if *nif, const uint8_t *dst_mac, uint32_t dst_ip,
		     uint16_t dst_port, uint16_t ip_id, const void *payload, size_t n,
		     uint8_t *out, size_t cap);

/* inet_sum adds n bytes at p as big-endian 16-bit words (an odd last byte
 * padded with zero) to sum; inet_fold folds and complements the result
 * into an Internet checksum (RFC 1071). */
uint64_t inet_sum(const uint8_t *p, size_t n, uint64_t sum);
uint16_t inet_fold(uint64_t sum);

#endif
