/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as checkpoints and
 * TFRecord framing use it, plus TFRecord's mask (rotate right 15, add a constant)
 * which keeps a CRC of data that embeds CRCs from being trivially zero. */
#include <pthread.h>
#include "ir/ir.h"

static uint32_t table[256];
static void init_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
}

uint32_t kiln_crc32c(const void *data, size_t n) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, init_table);
  const unsigned char *p = data;
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t kiln_crc32c_masked(const void *data, size_t n) {
  uint32_t c = kiln_crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}
