/*
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib's crc32):
 * crc32(0, "123456789", 9) == 0xCBF43926. Pure code, table of 16 entries
 * (a nibble at a time), so it needs no initialisation and no lock.
 */
#ifndef GUESTS_CRC32_H
#define GUESTS_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* crc32_update continues crc (0 to start) over n bytes at p. */
uint32_t crc32_update(uint32_t crc, const void *p, size_t n);

#endif
