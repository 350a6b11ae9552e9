/*
 * The disk guest's records: one 512-byte sector each, self-describing and
 * checksummed, so data written before a failover can be verified after it.
 *
 *   [0, 4)     magic RECORD_MAGIC, little-endian ("FTRC")
 *   [4, 8)     layout version RECORD_VERSION
 *   [8, 16)    sequence number (the record for seq s lives in sector s)
 *   [16, 508)  payload: xorshift64 stream seeded by the sequence number
 *   [508, 512) CRC-32 of bytes [0, 508)
 *
 * Pure code: compiles freestanding and on the host.
 */
#ifndef GUESTS_RECORD_H
#define GUESTS_RECORD_H

#include <stdint.h>

#define RECORD_SIZE 512
#define RECORD_MAGIC 0x43525446u /* "FTRC" little-endian */
#define RECORD_VERSION 1u

/* Verdicts of record_check. Zero is "valid"; every failure is non-zero. */
enum record_status {
	RECORD_OK = 0,
	RECORD_BAD_MAGIC,
	RECORD_BAD_VERSION,
	RECORD_BAD_CRC,
	RECORD_BAD_SEQ,
	RECORD_BAD_PAYLOAD,
};

/* record_fill writes the record for seq into buf[0, RECORD_SIZE). */
void record_fill(uint8_t *buf, uint64_t seq);

/* record_check says whether buf[0, RECORD_SIZE) is exactly the record for
 * seq, naming the first thing wrong (checked in the order of the enum). */
enum record_status record_check(const uint8_t *buf, uint64_t seq);

/* record_status_str names a status for messages ("bad crc", ...). */
const char *record_status_str(enum record_status st);

#endif
