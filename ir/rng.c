/* Counter-based random numbers: element i of a random tensor with seed s is a pure
 * function of (s, i), so the evaluator, the JIT and AOT objects agree bit for bit on
 * the bits, and any slice of a tensor can be generated independently. The mixer is
 * SplitMix64's finaliser applied to seed and counter; codegen emits the same steps.
 * A run-time key (a step counter, say) selects a different stream of the same seed,
 * which is how dropout draws a fresh mask every training step from one traced graph. */
#include "ir/ir.h"

uint64_t kiln_rng_bits(uint64_t seed, uint64_t counter) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + counter * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double kiln_rng_uniform01(uint64_t seed, uint64_t counter) {
  return (double)(kiln_rng_bits(seed, counter) >> 11) * 0x1.0p-53;
}

uint64_t kiln_rng_stream(uint64_t seed, int64_t key) { return seed + (uint64_t)key * 0xA0761D6478BD642Full; }
