/*
 * The kv guest's whole per-frame logic: one received Ethernet frame in,
 * at most one frame out (an ARP reply or the UDP reply of the kv
 * protocol, see kvstore.h). The virtio-net driver around it only moves
 * frames.
 *
 * Pure code: compiles freestanding and on the host.
 */
#ifndef GUESTS_KVSRV_H
#define GUESTS_KVSRV_H

#include <stddef.h>
#include <stdint.h>

#include "kvstore.h"
#include "net.h"

struct kvsrv {
	struct net_if nif;
	struct kv_store kv;
	uint16_t ip_id;                      /* last IPv4 id sent */
	uint64_t verdicts[NET_NR_VERDICTS];  /* frames seen, by net_parse verdict */
	uint64_t replies;                    /* frames returned for sending */
};

/* kvsrv_init resets the server for interface nif (copied). */
void kvsrv_init(struct kvsrv *s, const struct net_if *nif);

/* kvsrv_frame handles one received frame (without FCS) and returns the
 * length of the reply written to out, or 0 when the frame is dropped.
 * out must hold ETH_MAX_FRAME bytes; a smaller cap drops the frame. */
size_t kvsrv_frame(struct kvsrv *s, const uint8_t *frame, size_t len, uint8_t *out, size_t cap);

/* kvsrv_drops is the number of frames dropped so far. */
uint64_t kvsrv_drops(const struct kvsrv *s);

#endif
