/* The seeded mutator of kiln's own fuzz drivers (tests/fuzz_onnx.c, and the suite's
 * replay of every reader in tests/fuzz/fuzz_readers.c): one to four edits of an
 * input — bit flips, interesting bytes, truncation, deleted and duplicated runs,
 * splices from another input — from a splitmix64 stream, so a run is reproducible
 * from its seed. */
#ifndef KILN_TESTS_FUZZ_MUTATE_H
#define KILN_TESTS_FUZZ_MUTATE_H
#include <stdint.h>
#include <string.h>

typedef struct fuzz_rng {
  uint64_t state;
} fuzz_rng;

static inline uint64_t fuzz_next(fuzz_rng *r) { /* splitmix64 */
  uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static inline size_t fuzz_below(fuzz_rng *r, size_t n) { return n ? (size_t)(fuzz_next(r) % n) : 0; }

/* One to four mutations of src[0, len) into out (capacity cap), splicing from
 * other[0, other_len) (may be empty); returns the new length. */
static inline size_t fuzz_mutate(fuzz_rng *r, const unsigned char *src, size_t len, const unsigned char *other,
                                 size_t other_len, unsigned char *out, size_t cap) {
  size_t n = len < cap ? len : cap;
  memcpy(out, src, n);
  static const unsigned char interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x08, 0x10, 0x12, 0x1a, 0x22, 0x3a, 0x42};
  for (int m = 0, count = 1 + (int)fuzz_below(r, 4); m < count && n > 0; m++) {
    size_t at = fuzz_below(r, n);
    switch (fuzz_below(r, 6)) {
    case 0: out[at] ^= (unsigned char)(1u << fuzz_below(r, 8)); break;
    case 1: out[at] = interesting[fuzz_below(r, sizeof interesting)]; break;
    case 2: n = at; break; /* truncate */
    case 3: { /* delete a run */
      size_t k = 1 + fuzz_below(r, 16);
      if (at + k > n) k = n - at;
      memmove(out + at, out + at + k, n - at - k);
      n -= k;
      break;
    }
    case 4: { /* duplicate a run */
      size_t k = 1 + fuzz_below(r, 32);
      if (at + k > n) k = n - at;
      if (n + k > cap) break;
      memmove(out + at + k, out + at, n - at);
      n += k;
      break;
    }
    default: { /* overwrite with a run of another input */
      if (!other_len) break;
      size_t from = fuzz_below(r, other_len), k = 1 + fuzz_below(r, 64);
      if (from + k > other_len) k = other_len - from;
      if (at + k > n) k = n - at;
      memcpy(out + at, other + from, k);
    }
    }
  }
  return n;
}
#endif
