// Shared by gemma_edge's ExecuTorch kernel sources.
#pragma once

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace gemma_edge {

// IEEE half -> float for a finite or subnormal value (table scales are never inf/NaN: export refuses
// those; an fp16 KV cache holds what fp16 holds).
static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = man;
      do { ++e; m <<= 1; } while ((m & 0x400u) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
#endif
}

// The a8 heads' activations, one group of gs (export/executorch_backend/table.py quantize_groups):
// s = max|x| / 127 and q = round half to even of x / s, within +-127 (s = 0: every q is 0).
static inline float a8_group_scale(const float* xg, int64_t gs) {
  float mx = 0.f;
  for (int64_t i = 0; i < gs; ++i) mx = std::max(mx, std::fabs(xg[i]));
  return mx / 127.f;
}

static inline int8_t a8_code(float x, float s) {
  return static_cast<int8_t>(std::nearbyint(std::min(127.f, std::max(-127.f, x / s))));
}

}  // namespace gemma_edge
