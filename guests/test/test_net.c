/*
 * Frames are built and replies checked here with the test's own encoder
 * and checksum, not with pure/net.c's, so a bug shared by both sides
 * cannot hide.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kvsrv.h"

static const uint8_t our_mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
static const uint8_t cli_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };
static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
#define OUR_IP 0x0A00020Fu
#define CLI_IP 0x0A000202u
#define OUR_PORT 7777
#define CLI_PORT 40000

static uint16_t t_csum(const uint8_t *p, size_t n, uint32_t sum)
{
	for (size_t i = 0; i < n; i++)
		sum += (i % 2 == 0) ? (uint32_t)p[i] << 8 : p[i];
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void be16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void be32(uint8_t *p, uint32_t v)
{
	be16(p, v >> 16);
	be16(p + 2, v & 0xffff);
}

static unsigned rd16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)rd16(p) << 16 | rd16(p + 2);
}

/* A UDP request and the ways to spoil it. */
struct udp_spec {
	const uint8_t *dst_mac;
	unsigned ethertype, version, ihl, flags_frag, proto, udp_csum_mode;
	uint32_t src_ip, dst_ip;
	unsigned src_port, dst_port;
	int total_adjust, udp_len_adjust, ip_csum_adjust;
	size_t pad; /* bytes after the IP datagram */
	const char *payload;
};

static struct udp_spec good(const char *payload)
{
	return (struct udp_spec){ our_mac, 0x0800, 4, 5, 0x4000, 17, 1, CLI_IP, OUR_IP, CLI_PORT,
				  OUR_PORT, 0, 0, 0, 0, payload };
}

/* mk_udp builds the frame; udp_csum_mode 0 = none, 1 = right, 2 = wrong. */
static size_t mk_udp(uint8_t *f, const struct udp_spec *s)
{
	size_t n = strlen(s->payload), ihl = s->ihl * 4, hl = ihl < 20 ? 20 : ihl;
	uint8_t *ip = f + 14, *udp = ip + hl;
	size_t udp_len = 8 + n, total = hl + udp_len;

	memset(f, 0, 14 + total + s->pad);
	memcpy(f, s->dst_mac, 6);
	memcpy(f + 6, cli_mac, 6);
	be16(f + 12, s->ethertype);
	ip[0] = (uint8_t)(s->version << 4 | s->ihl);
	be16(ip + 2, (unsigned)((int)total + s->total_adjust));
	be16(ip + 4, 0x1234);
	be16(ip + 6, s->flags_frag);
	ip[8] = 64;
	ip[9] = (uint8_t)s->proto;
	be32(ip + 12, s->src_ip);
	be32(ip + 16, s->dst_ip);
	for (size_t i = 20; i < hl; i++)
		ip[i] = 1; /* NOP options */
	be16(ip + 10, (unsigned)(t_csum(ip, hl, 0) + s->ip_csum_adjust));
	be16(udp, s->src_port);
	be16(udp + 2, s->dst_port);
	be16(udp + 4, (unsigned)((int)udp_len + s->udp_len_adjust));
	memcpy(udp + 8, s->payload, n);
	if (s->udp_csum_mode != 0) {
		uint32_t ph = (s->src_ip >> 16) + (s->src_ip & 0xffff) + (s->dst_ip >> 16) +
			      (s->dst_ip & 0xffff) + 17 + (uint32_t)udp_len;
		uint16_t c = t_csum(udp, udp_len, ph);
		if (c == 0)
			c = 0xffff;
		be16(udp + 6, s->udp_csum_mode == 2 ? c ^ 0x0100 : c);
	}
	return 14 + total + s->pad;
}

static size_t mk_arp(uint8_t *f, const uint8_t *dst, unsigned op, uint32_t target, unsigned hlen)
{
	memset(f, 0, 60);
	memcpy(f, dst, 6);
	memcpy(f + 6, cli_mac, 6);
	be16(f + 12, 0x0806);
	be16(f + 14, 1);
	be16(f + 16, 0x0800);
	f[18] = (uint8_t)hlen;
	f[19] = 4;
	be16(f + 20, op);
	memcpy(f + 22, cli_mac, 6);
	be32(f + 28, CLI_IP);
	be32(f + 38, target);
	return 60;
}

/* reply_to checks a UDP reply to the client at cmac/cip/cport end to end
 * and returns its payload (NUL-terminated, in a static buffer), or NULL. */
static const char *reply_to(const uint8_t *f, size_t len, const uint8_t *cmac, uint32_t cip,
			    unsigned cport)
{
	static char payload[2048];
	const uint8_t *ip = f + 14, *udp = ip + 20;
	size_t n;

	CHECK(len >= 60 && len <= 1514, "reply length %zu", len);
	if (len < 42)
		return NULL;
	CHECK(memcmp(f, cmac, 6) == 0 && memcmp(f + 6, our_mac, 6) == 0 && rd16(f + 12) == 0x0800,
	      "reply Ethernet header");
	CHECK(ip[0] == 0x45 && rd16(ip + 6) == 0x4000 && ip[8] == 64 && ip[9] == 17,
	      "reply IPv4 fields");
	CHECK(t_csum(ip, 20, 0) == 0, "reply IPv4 checksum");
	CHECK(rd32(ip + 12) == OUR_IP && rd32(ip + 16) == cip, "reply addresses");
	n = rd16(ip + 2);
	CHECK(n >= 28 && 14 + n <= len && (14 + n == len || len == 60), "reply total length %zu", n);
	if (n < 28 || 14 + n > len)
		return NULL;
	CHECK(rd16(udp) == OUR_PORT && rd16(udp + 2) == cport && rd16(udp + 4) == n - 20,
	      "reply UDP header");
	uint32_t ph = (OUR_IP >> 16) + (OUR_IP & 0xffff) + (cip >> 16) + (cip & 0xffff) + 17 +
		      (uint32_t)(n - 20);
	CHECK(rd16(udp + 6) != 0 && t_csum(udp, n - 20, ph) == 0, "reply UDP checksum");
	memcpy(payload, udp + 8, n - 28);
	payload[n - 28] = 0;
	for (size_t i = 14 + n; i < len; i++)
		CHECK(f[i] == 0, "padding byte %zu", i);
	return payload;
}

static const char *reply_ok(const uint8_t *f, size_t len)
{
	return reply_to(f, len, cli_mac, CLI_IP, CLI_PORT);
}

static struct kvsrv *new_srv(void)
{
	struct kvsrv *s = malloc(sizeof(*s));
	struct net_if nif = { .ip = OUR_IP, .port = OUR_PORT };
	memcpy(nif.mac, our_mac, 6);
	kvsrv_init(s, &nif);
	return s;
}

/* expect_drop feeds a frame and checks it is dropped for reason v. */
static void expect_drop(struct kvsrv *s, const uint8_t *f, size_t len, enum net_verdict v,
			const char *what)
{
	static uint8_t out[2048];
	uint64_t before = s->verdicts[v], replies = s->replies;
	size_t n = kvsrv_frame(s, f, len, out, sizeof(out));
	CHECK(n == 0 && s->verdicts[v] == before + 1 && s->replies == replies,
	      "%s: want drop \"%s\", got reply %zu", what, net_verdict_str(v), n);
}

static const char *expect_reply(struct kvsrv *s, const uint8_t *f, size_t len, const char *what)
{
	static uint8_t out[2048];
	size_t n = kvsrv_frame(s, f, len, out, sizeof(out));
	CHECK(n != 0, "%s: no reply", what);
	return n != 0 ? reply_ok(out, n) : NULL;
}

#define SPEC(field, value, verdict)                                  \
	do {                                                         \
		struct udp_spec sp = good("GET k");                  \
		sp.field = value;                                    \
		expect_drop(s, f, mk_udp(f, &sp), verdict, #field "=" #value); \
	} while (0)

static void test_udp_cases(struct kvsrv *s)
{
	static uint8_t f[4096];
	struct udp_spec sp;
	const char *r;
	size_t len;

	sp = good("GET k");
	r = expect_reply(s, f, mk_udp(f, &sp), "valid request");
	CHECK(r && strcmp(r, "1 NOTFOUND") == 0, "first reply \"%s\"", r ? r : "");
	sp = good("SET k hello world");
	sp.udp_csum_mode = 0;
	r = expect_reply(s, f, mk_udp(f, &sp), "no UDP checksum");
	CHECK(r && strcmp(r, "2 OK") == 0, "reply \"%s\"", r ? r : "");
	sp = good("GET k");
	sp.ihl = 6; /* with a 4-byte option */
	r = expect_reply(s, f, mk_udp(f, &sp), "IP options");
	CHECK(r && strcmp(r, "3 VALUE hello world") == 0, "reply \"%s\"", r ? r : "");
	sp = good("GET k");
	sp.pad = 30; /* Ethernet padding beyond the IP datagram */
	r = expect_reply(s, f, mk_udp(f, &sp), "padded frame");
	CHECK(r && strcmp(r, "4 VALUE hello world") == 0, "reply \"%s\"", r ? r : "");
	sp = good("GET kXX");
	sp.udp_len_adjust = -2; /* UDP shorter than the IP payload: trailing bytes ignored */
	sp.udp_csum_mode = 0;
	r = expect_reply(s, f, mk_udp(f, &sp), "short UDP length");
	CHECK(r && strcmp(r, "5 VALUE hello world") == 0, "reply \"%s\"", r ? r : "");
	sp = good("GET k");
	sp.flags_frag = 0; /* DF clear is fine */
	r = expect_reply(s, f, mk_udp(f, &sp), "DF clear");
	CHECK(r && strcmp(r, "6 VALUE hello world") == 0, "reply \"%s\"", r ? r : "");

	SPEC(dst_mac, cli_mac, NET_DROP_NOT_US);
	static const uint8_t mcast[6] = { 0x01, 0x00, 0x5e, 0x00, 0x00, 0x01 };
	SPEC(dst_mac, mcast, NET_DROP_NOT_US);
	SPEC(dst_mac, bcast, NET_DROP_IP_DST);
	SPEC(ethertype, 0x86dd, NET_DROP_ETHERTYPE);
	SPEC(ethertype, 0, NET_DROP_ETHERTYPE);
	SPEC(version, 6, NET_DROP_IP_HEADER);
	SPEC(ihl, 4, NET_DROP_IP_HEADER);
	SPEC(ihl, 0, NET_DROP_IP_HEADER);
	SPEC(total_adjust, 1, NET_DROP_IP_HEADER);
	SPEC(total_adjust, 5000, NET_DROP_IP_HEADER);
	SPEC(total_adjust, -33, NET_DROP_IP_HEADER); /* total below the header */
	SPEC(ip_csum_adjust, 1, NET_DROP_IP_CHECKSUM);
	SPEC(flags_frag, 0x2000, NET_DROP_IP_FRAGMENT);
	SPEC(flags_frag, 0x0001, NET_DROP_IP_FRAGMENT);
	SPEC(flags_frag, 0x4001, NET_DROP_IP_FRAGMENT);
	SPEC(proto, 6, NET_DROP_IP_PROTO);
	SPEC(dst_ip, 0x0A000210u, NET_DROP_IP_DST);
	SPEC(dst_ip, 0xFFFFFFFFu, NET_DROP_IP_DST);
	SPEC(src_ip, 0, NET_DROP_IP_SRC);
	SPEC(src_ip, 0xFFFFFFFFu, NET_DROP_IP_SRC);
	SPEC(src_ip, 0xE0000001u, NET_DROP_IP_SRC);
	SPEC(udp_len_adjust, 1, NET_DROP_UDP_HEADER);
	SPEC(udp_len_adjust, -6, NET_DROP_UDP_HEADER); /* UDP length 7 */
	SPEC(udp_len_adjust, -13, NET_DROP_UDP_HEADER); /* UDP length 0 */
	SPEC(src_port, 0, NET_DROP_UDP_HEADER);
	SPEC(udp_csum_mode, 2, NET_DROP_UDP_CHECKSUM);
	SPEC(dst_port, 7778, NET_DROP_UDP_PORT);

	/* An IP datagram too short to hold a UDP header. */
	sp = good("");
	sp.total_adjust = -5;
	expect_drop(s, f, mk_udp(f, &sp), NET_DROP_UDP_HEADER, "IP payload of 3 bytes");
	/* IHL pointing past the frame. */
	sp = good("");
	len = mk_udp(f, &sp);
	f[14] = 0x4f;
	expect_drop(s, f, 14 + 40, NET_DROP_IP_HEADER, "IHL 15 in a 40-byte datagram");
	/* Every truncation of a valid frame is dropped, never read past. */
	sp = good("GET k");
	len = mk_udp(f, &sp);
	for (size_t cut = 0; cut < len; cut++) {
		static uint8_t out[2048];
		uint8_t *copy = malloc(cut ? cut : 1); /* exact size, so ASan sees overreads */
		memcpy(copy, f, cut);
		CHECK(kvsrv_frame(s, copy, cut, out, sizeof(out)) == 0, "truncated at %zu replied", cut);
		free(copy);
	}
	/* Short and oversize frames. */
	expect_drop(s, f, 0, NET_DROP_SHORT, "empty frame");
	expect_drop(s, f, 13, NET_DROP_SHORT, "13-byte frame");
	sp = good("GET k");
	sp.pad = 1515 - 47;
	len = mk_udp(f, &sp);
	CHECK(len == 1515, "oversize frame length %zu", len);
	expect_drop(s, f, len, NET_DROP_OVERSIZE, "1515-byte frame");
	/* The largest frame is served (with an ERR: the request is too long). */
	char big[1473];
	memset(big, 'A', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	sp = good(big);
	len = mk_udp(f, &sp);
	CHECK(len == 1514, "max frame length %zu", len);
	r = expect_reply(s, f, len, "1514-byte frame");
	CHECK(r && strstr(r, " ERR too long") != NULL, "reply \"%s\"", r ? r : "");
	/* A too-small output buffer drops instead of overflowing. */
	{
		static uint8_t out[100];
		sp = good("GET k");
		CHECK(kvsrv_frame(s, f, mk_udp(f, &sp), out, sizeof(out)) == 0, "cap 100");
	}
}

static void test_arp(struct kvsrv *s)
{
	static uint8_t f[128], out[2048];
	size_t n;

	n = kvsrv_frame(s, f, mk_arp(f, bcast, 1, OUR_IP, 6), out, sizeof(out));
	CHECK(n == 60, "ARP reply length %zu", n);
	CHECK(memcmp(out, cli_mac, 6) == 0 && memcmp(out + 6, our_mac, 6) == 0 &&
		      rd16(out + 12) == 0x0806,
	      "ARP reply Ethernet header");
	CHECK(rd16(out + 14) == 1 && rd16(out + 16) == 0x0800 && out[18] == 6 && out[19] == 4 &&
		      rd16(out + 20) == 2,
	      "ARP reply fixed fields");
	CHECK(memcmp(out + 22, our_mac, 6) == 0 && rd32(out + 28) == OUR_IP &&
		      memcmp(out + 32, cli_mac, 6) == 0 && rd32(out + 38) == CLI_IP,
	      "ARP reply addresses");
	n = kvsrv_frame(s, f, mk_arp(f, our_mac, 1, OUR_IP, 6), out, sizeof(out));
	CHECK(n == 60, "unicast ARP request answered");
	expect_drop(s, f, mk_arp(f, bcast, 1, OUR_IP + 1, 6), NET_DROP_ARP_TARGET, "ARP for another");
	expect_drop(s, f, mk_arp(f, bcast, 2, OUR_IP, 6), NET_DROP_ARP_OP, "ARP reply");
	expect_drop(s, f, mk_arp(f, bcast, 1, OUR_IP, 8), NET_DROP_ARP_FORMAT, "ARP hlen 8");
	mk_arp(f, bcast, 1, OUR_IP, 6);
	expect_drop(s, f, 14 + 27, NET_DROP_ARP_FORMAT, "ARP truncated");
	mk_arp(f, bcast, 1, OUR_IP, 6);
	be16(f + 16, 0x86dd);
	expect_drop(s, f, 60, NET_DROP_ARP_FORMAT, "ARP for IPv6");
}

/* fix_checksums recomputes the IPv4 and UDP checksums of a mutated frame
 * whose headers are otherwise intact, so mutations reach the kv parser. */
static void fix_checksums(uint8_t *f, size_t len)
{
	uint8_t *ip = f + 14, *udp = ip + 20;
	size_t ulen;

	if (len < 42)
		return;
	be16(ip + 10, 0);
	be16(ip + 10, t_csum(ip, 20, 0));
	ulen = rd16(udp + 4);
	if (ulen < 8 || 34 + ulen > len)
		return;
	be16(udp + 6, 0);
	uint32_t ph = (CLI_IP >> 16) + (CLI_IP & 0xffff) + (OUR_IP >> 16) + (OUR_IP & 0xffff) + 17 +
		      (uint32_t)ulen;
	uint16_t c = t_csum(udp, ulen, ph);
	be16(udp + 6, c ? c : 0xffff);
}

static void test_fuzz(struct kvsrv *s)
{
	static uint8_t f[1600], out[2048];
	static const char *seeds[] = { "GET k", "SET k v", "INCR n", "SET abcdefghijklmnop 12345",
				       "GET abcdefghijklmnop" };
	uint64_t frames = 0, seq = s->kv.seq;

	for (int i = 0; i < 150000; i++) {
		size_t len;
		int kind = (int)(test_rand() % 4);
		if (kind == 0) {
			/* Random bytes behind a plausible or random Ethernet header. */
			len = (size_t)(test_rand() % sizeof(f));
			for (size_t k = 0; k < len; k++)
				f[k] = (uint8_t)test_rand();
			if (len >= 14 && test_rand() % 2) {
				memcpy(f, our_mac, 6);
				be16(f + 12, test_rand() % 2 ? 0x0800 : 0x0806);
			}
		} else {
			struct udp_spec sp = good(seeds[test_rand() % 5]);
			len = mk_udp(f, &sp);
			int flips = 1 + (int)(test_rand() % 4);
			for (int k = 0; k < flips; k++)
				f[14 + test_rand() % (len - 14)] = (uint8_t)test_rand();
			if (kind == 2)
				len = (size_t)(test_rand() % (len + 1));
			if (kind == 3)
				fix_checksums(f, len);
		}
		uint8_t *copy = malloc(len ? len : 1);
		memcpy(copy, f, len);
		uint64_t udp_before = s->verdicts[NET_UDP];
		size_t n = kvsrv_frame(s, copy, len, out, sizeof(out));
		free(copy);
		frames++;
		if (s->verdicts[NET_UDP] != udp_before) {
			/* Exactly one kv reply, with the next sequence number. */
			seq++;
			CHECK(n != 0, "UDP verdict without a reply");
			/* The reply goes to whoever the (mutated) request came from. */
			const char *r = n ? reply_to(out, n, f + 6, rd32(f + 26), rd16(f + 14 + (f[14] & 0xf) * 4))
					  : NULL;
			char want[32];
			snprintf(want, sizeof(want), "%lu ", (unsigned long)seq);
			CHECK(r && strncmp(r, want, strlen(want)) == 0 && strlen(r) < KV_REPLY_MAX,
			      "fuzz reply \"%s\" should start \"%s\"", r ? r : "", want);
		} else if (n != 0) {
			CHECK(n == 60 && rd16(out + 12) == 0x0806, "non-UDP reply must be ARP");
		}
	}
	uint64_t total = 0;
	for (int v = 0; v < NET_NR_VERDICTS; v++)
		total += s->verdicts[v];
	CHECK(s->kv.seq == seq, "kv sequence %lu, counted %lu", (unsigned long)s->kv.seq,
	      (unsigned long)seq);
	CHECK(s->verdicts[NET_UDP] > 1000, "fuzzing reached the kv parser only %lu times",
	      (unsigned long)s->verdicts[NET_UDP]);
	(void)total;
	(void)frames;
}

void test_net(void)
{
	struct kvsrv *s = new_srv();
	uint64_t total = 0, frames;

	test_udp_cases(s);
	test_arp(s);
	test_fuzz(s);
	for (int v = 0; v < NET_NR_VERDICTS; v++) {
		total += s->verdicts[v];
		CHECK(strcmp(net_verdict_str((enum net_verdict)v), "unknown verdict") != 0,
		      "verdict %d has a name", v);
	}
	frames = total;
	CHECK(kvsrv_drops(s) + s->verdicts[NET_UDP] + s->verdicts[NET_ARP_REQUEST] == frames,
	      "drops + served == frames");
	CHECK(s->verdicts[NET_INVALID] == 1, "only the cap-100 call is invalid, got %lu",
	      (unsigned long)s->verdicts[NET_INVALID]);

	/* A datagram whose checksum computes to 0 is sent with 0xFFFF (RFC 768:
	 * 0 means "no checksum"). Pick the 2-byte payload that makes it so. */
	{
		static uint8_t pl[2], frame[128];
		struct net_if nif0 = { .ip = OUR_IP, .port = OUR_PORT };
		uint32_t sum = (OUR_IP >> 16) + (OUR_IP & 0xffff) + (CLI_IP >> 16) + (CLI_IP & 0xffff) +
			       17 + 10 + OUR_PORT + CLI_PORT + 10;
		while (sum >> 16)
			sum = (sum & 0xffff) + (sum >> 16);
		be16(pl, 0xffff - sum);
		size_t n = net_build_udp(&nif0, cli_mac, CLI_IP, CLI_PORT, 7, pl, 2, frame, sizeof(frame));
		CHECK(n == 60 && rd16(frame + 40) == 0xffff, "zero checksum sent as %04x", rd16(frame + 40));
	}

	/* The builder refuses what does not fit. */
	static uint8_t small[59], big[1600], big_out[1600];
	struct net_if nif = { .ip = OUR_IP, .port = OUR_PORT };
	CHECK(net_build_udp(&nif, cli_mac, CLI_IP, 1, 1, "x", 1, small, sizeof(small)) == 0,
	      "cap 59");
	CHECK(net_build_udp(&nif, cli_mac, CLI_IP, 1, 1, big, 1473, big_out, sizeof(big_out)) == 0,
	      "payload 1473");
	free(s);
}
