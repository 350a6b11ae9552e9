#include "kvsrv.h"

void kvsrv_init(struct kvsrv *s, const struct net_if *nif)
{
	__builtin_memset(s, 0, sizeof(*s));
	s->nif = *nif;
	kv_init(&s->kv);
}

size_t kvsrv_frame(struct kvsrv *s, const uint8_t *frame, size_t len, uint8_t *out, size_t cap)
{
	struct net_rx rx;
	enum net_verdict v;
	char reply[KV_REPLY_MAX];
	size_t n, flen = 0;

	if (cap < ETH_MAX_FRAME) {
		s->verdicts[NET_INVALID]++;
		return 0;
	}
	v = net_parse(&s->nif, frame, len, &rx);
	s->verdicts[v]++;
	switch (v) {
	case NET_ARP_REQUEST:
		flen = net_build_arp_reply(&s->nif, &rx, out, cap);
		break;
	case NET_UDP:
		n = kv_execute(&s->kv, rx.payload, rx.payload_len, reply, sizeof(reply));
		s->ip_id++;
		flen = net_build_udp(&s->nif, rx.src_mac, rx.src_ip, rx.src_port, s->ip_id, reply, n,
				     out, cap);
		break;
	default:
		break;
	}
	if (flen != 0)
		s->replies++;
	return flen;
}

uint64_t kvsrv_drops(const struct kvsrv *s)
{
	uint64_t d = 0;

	for (int v = 0; v < NET_NR_VERDICTS; v++)
		if (v != NET_ARP_REQUEST && v != NET_UDP)
			d += s->verdicts[v];
	return d;
}
