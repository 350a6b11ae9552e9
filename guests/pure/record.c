#include "record.h"

#include "crc32.h"
#include "le.h"
#include "xorshift.h"

#define RECORD_PAYLOAD_OFF 16
#define RECORD_CRC_OFF 508

/* payload_byte returns byte i of seq's payload, advancing the stream. */
static uint8_t payload_byte(uint64_t *state, uint64_t *word, unsigned i)
{
	if (i % 8 == 0)
		*word = xorshift64(state);
	return (uint8_t)(*word >> (8 * (i % 8)));
}

void record_fill(uint8_t *buf, uint64_t seq)
{
	uint64_t state = xorshift_seed(seq), word = 0;

	put_le32(buf, RECORD_MAGIC);
	put_le32(buf + 4, RECORD_VERSION);
	put_le64(buf + 8, seq);
	for (unsigned i = 0; i < RECORD_CRC_OFF - RECORD_PAYLOAD_OFF; i++)
		buf[RECORD_PAYLOAD_OFF + i] = payload_byte(&state, &word, i);
	put_le32(buf + RECORD_CRC_OFF, crc32_update(0, buf, RECORD_CRC_OFF));
}

enum record_status record_check(const uint8_t *buf, uint64_t seq)
{
	uint64_t state = xorshift_seed(seq), word = 0;

	if (get_le32(buf) != RECORD_MAGIC)
		return RECORD_BAD_MAGIC;
	if (get_le32(buf + 4) != RECORD_VERSION)
		return RECORD_BAD_VERSION;
	if (get_le32(buf + RECORD_CRC_OFF) != crc32_update(0, buf, RECORD_CRC_OFF))
		return RECORD_BAD_CRC;
	if (get_le64(buf + 8) != seq)
		return RECORD_BAD_SEQ;
	for (unsigned i = 0; i < RECORD_CRC_OFF - RECORD_PAYLOAD_OFF; i++)
		if (buf[RECORD_PAYLOAD_OFF + i] != payload_byte(&state, &word, i))
			return RECORD_BAD_PAYLOAD;
	return RECORD_OK;
}

const char *record_status_str(enum record_status st)
{
	switch (st) {
	case RECORD_OK:
		return "ok";
	case RECORD_BAD_MAGIC:
		return "bad magic";
	case RECORD_BAD_VERSION:
		return "bad version";
	case RECORD_BAD_CRC:
		return "bad crc";
	case RECORD_BAD_SEQ:
		return "wrong sequence number";
	case RECORD_BAD_PAYLOAD:
		return "payload differs";
	}
	return "unknown status";
}
