// The tied 4-bit table in tiles of 8 rows (export/executorch_backend/table.py tile_rows): the head
// against int8 activations (tile8_head_a8) and the embedding lookup (tile8_lookup) read one tensor.
//
// weight uint8 (N/8, G, 8 * gs/2): per tile of 8 rows and group of gs columns, the 8 rows' packed
// codes one after another (byte j of a row: code 2j + 8 in the high nibble, 2j+1 + 8 in the low one);
// scales half (N/8, G, 8). A decode step streams the table once: one sequential read of codes and
// one of scales, where the row-major layout (one row's groups, then the next row's) reads two per
// row. On the AVX-512 VNNI path (gs = 32) one group of a tile is two 512-bit loads of four rows each,
// met by the group's activations broadcast to every 128-bit lane: two VNNI dots per load, 16 int32
// lanes (four per row), scaled per row and accumulated in fp32 across the groups. AVX2 machines take
// the same scheme at 256 bits (two rows a load); other machines, or other gs, a portable loop.
//
// The activations are quantized per group as table_head_a8 does (s = max|x_g| / 127, q = round half
// to even of x / s), so a group's dot is exact in int32: sum_g s_w s_x (sum_i c_i q_i - 8 sum_i q_i).
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"

namespace gemma_edge {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::KernelRuntimeContext;

namespace {

constexpr int64_t kTile = 8;

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512F__)
#define GEMMA_EDGE_TILE8_AVX512 1
#endif

// One x row quantized per group of gs: q in natural order, or (simd) per group the gs/2 values that
// meet the high nibbles (even positions) then the gs/2 that meet the low ones; sx per group; n8q (simd,
// gs = 32) per group the 4 int32 lane offsets -8 * sum(q) of the bytes each VNNI lane covers.
struct Tile8Row {
  std::vector<int8_t> q;
  std::vector<float> sx;
  std::vector<int32_t> n8q;
};

void quantize_tile8_row(const float* x, int64_t K, int64_t gs, bool simd, Tile8Row& r) {
  const int64_t G = K / gs, half = gs / 2;
  r.q.assign(K, 0);
  r.sx.assign(G, 0.f);
  for (int64_t g = 0; g < G; ++g) {
    const float* xg = x + g * gs;
    const float s = a8_group_scale(xg, gs);
    r.sx[g] = s;
    if (s == 0.f) continue;
    for (int64_t i = 0; i < gs; ++i) r.q[g * gs + (simd ? (i % 2) * half + i / 2 : i)] = a8_code(xg[i], s);
  }
  if (!simd) return;
  r.n8q.assign(G * 4, 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t l = 0; l < 4; ++l) {
      int32_t sum = 0;
      for (int64_t j = 4 * l; j < 4 * l + 4; ++j) sum += r.q[g * 32 + j] + r.q[g * 32 + 16 + j];
      r.n8q[g * 4 + l] = -8 * sum;
    }
}

// The 8 outputs of one tile, portable: any even gs.
void tile_dot_portable(const uint8_t* w, const uint16_t* sc, const Tile8Row& x, int64_t G, int64_t gs, float* out) {
  const int64_t b = gs / 2;
  for (int64_t r = 0; r < kTile; ++r) {
    float acc = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* wr = w + (g * kTile + r) * b;
      const int8_t* q = x.q.data() + g * gs;
      int32_t d = 0;
      for (int64_t j = 0; j < b; ++j)
        d += (static_cast<int32_t>(wr[j] >> 4) - 8) * q[2 * j] + (static_cast<int32_t>(wr[j] & 15) - 8) * q[2 * j + 1];
      acc += static_cast<float>(d) * (half_to_float(sc[g * kTile + r]) * x.sx[g]);
    }
    out[r] = acc;
  }
}

#if defined(GEMMA_EDGE_TILE8_AVX512)
// The 8 outputs of one tile at gs = 32 (see the top of the file); `ahead` bytes further on in the
// stream are prefetched (the next tiles' codes and scales).
inline void tile_dot_avx512(const uint8_t* w, const uint16_t* sc, const Tile8Row& x, int64_t G, int64_t ahead,
                            float* out) {
  const __m512i m0f = _mm512_set1_epi8(0x0f);
  const __m512i rows03 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i rows47 = _mm512_set_epi32(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4);
  const int8_t* q = x.q.data();
  const int32_t* n8q = x.n8q.data();
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* wg = w + g * 128;
    _mm_prefetch(reinterpret_cast<const char*>(wg + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(wg + ahead + 64), _MM_HINT_T0);
    if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + g * 8 + ahead / 16), _MM_HINT_T0);
    const __m512i w0 = _mm512_loadu_si512(wg), w1 = _mm512_loadu_si512(wg + 64);
    const __m512i xe = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 32)));
    const __m512i xo = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 32 + 16)));
    const __m512i nq = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(n8q + g * 4)));
    __m512i d0 = _mm512_dpbusd_epi32(nq, _mm512_and_si512(_mm512_srli_epi16(w0, 4), m0f), xe);
    d0 = _mm512_dpbusd_epi32(d0, _mm512_and_si512(w0, m0f), xo);
    __m512i d1 = _mm512_dpbusd_epi32(nq, _mm512_and_si512(_mm512_srli_epi16(w1, 4), m0f), xe);
    d1 = _mm512_dpbusd_epi32(d1, _mm512_and_si512(w1, m0f), xo);
    const __m256 s8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + g * 8))),
                                    _mm256_set1_ps(x.sx[g]));
    const __m512 s = _mm512_castps256_ps512(s8);
    a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_permutexvar_ps(rows03, s), a0);
    a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_permutexvar_ps(rows47, s), a1);
  }
  // Each row's 4 lanes summed into all 4, then lanes 0, 4, 8, 12 of a0 and of a1 are rows 0..7.
  a0 = _mm512_add_ps(a0, _mm512_shuffle_ps(a0, a0, 0xB1));
  a0 = _mm512_add_ps(a0, _mm512_shuffle_ps(a0, a0, 0x4E));
  a1 = _mm512_add_ps(a1, _mm512_shuffle_ps(a1, a1, 0xB1));
  a1 = _mm512_add_ps(a1, _mm512_shuffle_ps(a1, a1, 0x4E));
  const __m512i pick = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 28, 24, 20, 16, 12, 8, 4, 0);
  _mm256_storeu_ps(out, _mm512_castps512_ps256(_mm512_permutex2var_ps(a0, pick, a1)));
}
#endif

#if !defined(GEMMA_EDGE_TILE8_AVX512) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define GEMMA_EDGE_TILE8_AVX2 1
// The 8 outputs of one tile at gs = 32 with 256-bit vectors: one load is two rows, each row's 16
// code bytes meet the group's activations broadcast to both 128-bit lanes (VNNI where there is
// AVX-VNNI, else maddubs + madd: a pair of products is at most 15 * 127 * 2, exact in int16).
inline void tile_dot_avx2(const uint8_t* w, const uint16_t* sc, const Tile8Row& x, int64_t G, int64_t ahead,
                          float* out) {
  const __m256i m0f = _mm256_set1_epi8(0x0f);
#if !defined(__AVXVNNI__)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  const int8_t* q = x.q.data();
  const int32_t* n8q = x.n8q.data();
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t g = 0; g < G; ++g) {
    const uint8_t* wg = w + g * 128;
    _mm_prefetch(reinterpret_cast<const char*>(wg + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(wg + ahead + 64), _MM_HINT_T0);
    if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(sc + g * 8 + ahead / 16), _MM_HINT_T0);
    const __m256i xe = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 32)));
    const __m256i xo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + g * 32 + 16)));
    const __m256i nq = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(n8q + g * 4)));
    const __m256 s8 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + g * 8))),
                                    _mm256_set1_ps(x.sx[g]));
    for (int p = 0; p < 4; ++p) {  // rows 2p, 2p + 1
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wg + 32 * p));
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m0f), lo = _mm256_and_si256(wv, m0f);
#if defined(__AVXVNNI__)
      const __m256i d = _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(nq, hi, xe), lo, xo);
#else
      const __m256i d = _mm256_add_epi32(
          nq, _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(hi, xe), _mm256_maddubs_epi16(lo, xo)), ones));
#endif
      const __m256i rows = _mm256_set_epi32(2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p, 2 * p, 2 * p, 2 * p);
      acc[p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_permutevar8x32_ps(s8, rows), acc[p]);
    }
  }
  // hadd twice: [r0, r2, r4, r6 | r1, r3, r5, r7], then into row order.
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(h, _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0)));
}
#endif

// Whether a SIMD path takes groups of gs (and so reads q in the simd order with n8q).
inline bool simd_tile8(int64_t gs) {
#if defined(GEMMA_EDGE_TILE8_AVX512) || defined(GEMMA_EDGE_TILE8_AVX2)
  return gs == 32;
#else
  (void)gs;
  return false;
#endif
}

// weight (T, G, 8 * b) uint8 and scales (T, G, 8) half: G groups of gs = 2b columns.
bool tile8_table_ok(const Tensor& weight, const Tensor& scales) {
  return weight.scalar_type() == ScalarType::Byte && weight.dim() == 3 && scales.scalar_type() == ScalarType::Half &&
         scales.dim() == 3 && scales.size(0) == weight.size(0) && scales.size(1) == weight.size(1) &&
         scales.size(2) == kTile && weight.size(1) > 0 && weight.size(2) > 0 && weight.size(2) % kTile == 0;
}

}  // namespace

// x (..., K) fp32 -> out (..., N) with N = 8 T and K = G gs.
Tensor& tile8_head_a8_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& scales,
                          Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, tile8_table_ok(weight, scales), InvalidArgument, out,
                      "gemma_edge::tile8_head_a8: a uint8 (N/8, G, 8 * gs/2) weight and half (N/8, G, 8) scales "
                      "expected");
  const int64_t T = weight.size(0), G = weight.size(1), gs = weight.size(2) / kTile * 2, N = T * kTile;
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && x.dim() >= 1 && x.size(x.dim() - 1) == G * gs &&
                               out.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "gemma_edge::tile8_head_a8: fp32 x (..., %" PRId64 ") and out expected",
                      G * gs);
  const int64_t K = G * gs, M = x.numel() / K;
  SizesType sizes[executorch::runtime::kTensorDimensionLimit];
  for (int64_t d = 0; d + 1 < x.dim(); ++d) sizes[d] = x.size(d);
  sizes[x.dim() - 1] = static_cast<SizesType>(N);
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())}) ==
                           executorch::runtime::Error::Ok, InvalidArgument, out);  // fmt: skip
  const float* xd = x.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();
  const uint8_t* wd = static_cast<const uint8_t*>(weight.const_data_ptr());
  const uint16_t* sd = static_cast<const uint16_t*>(scales.const_data_ptr());
  const bool simd = simd_tile8(gs);
  std::vector<Tile8Row> xq(M);
  for (int64_t m = 0; m < M; ++m) quantize_tile8_row(xd + m * K, K, gs, simd, xq[m]);
  const int64_t tile_bytes = G * kTile * gs / 2;
  executorch::extension::parallel_for(0, T, 32, [&](int64_t begin, int64_t end) {
    float o[kTile];
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t m = 0; m < M; ++m) {
#if defined(GEMMA_EDGE_TILE8_AVX512) || defined(GEMMA_EDGE_TILE8_AVX2)
        if (simd) {
          // Two tiles ahead, within this thread's range (past its end the prefetch would be wasted).
          const int64_t ahead = t + 2 < end ? 2 * tile_bytes : 0;
#if defined(GEMMA_EDGE_TILE8_AVX512)
          tile_dot_avx512(wd + t * tile_bytes, sd + t * G * kTile, xq[m], G, ahead, o);
#else
          tile_dot_avx2(wd + t * tile_bytes, sd + t * G * kTile, xq[m], G, ahead, o);
#endif
        } else
#endif
          tile_dot_portable(wd + t * tile_bytes, sd + t * G * kTile, xq[m], G, gs, o);
        std::copy(o, o + kTile, od + m * N + t * kTile);
      }
    }
  });
  return out;
}

// ids int64 (any shape) -> out (*ids.shape, K) fp32: each row's codes times its group's scale.
Tensor& tile8_lookup_out(KernelRuntimeContext& ctx, const Tensor& weight, const Tensor& scales, const Tensor& ids,
                         Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, tile8_table_ok(weight, scales), InvalidArgument, out,
                      "gemma_edge::tile8_lookup: a uint8 (N/8, G, 8 * gs/2) weight and half (N/8, G, 8) scales "
                      "expected");
  ET_KERNEL_CHECK_MSG(ctx, ids.scalar_type() == ScalarType::Long &&
                               ids.dim() < static_cast<int64_t>(executorch::runtime::kTensorDimensionLimit) &&
                               out.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "gemma_edge::tile8_lookup: int64 ids and an fp32 out expected");
  const int64_t T = weight.size(0), G = weight.size(1), b = weight.size(2) / kTile, N = T * kTile, K = G * 2 * b;
  const int64_t* id = ids.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i)
    ET_KERNEL_CHECK_MSG(ctx, id[i] >= 0 && id[i] < N, InvalidArgument, out,
                        "gemma_edge::tile8_lookup: id %" PRId64 " is outside the table's %" PRId64 " rows", id[i], N);
  SizesType sizes[executorch::runtime::kTensorDimensionLimit];
  for (int64_t d = 0; d < ids.dim(); ++d) sizes[d] = ids.size(d);
  sizes[ids.dim()] = static_cast<SizesType>(K);
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(ids.dim() + 1)}) ==
                           executorch::runtime::Error::Ok, InvalidArgument, out);  // fmt: skip
  const uint8_t* wd = static_cast<const uint8_t*>(weight.const_data_ptr());
  const uint16_t* sd = static_cast<const uint16_t*>(scales.const_data_ptr());
  float* od = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const int64_t t = id[i] / kTile, r = id[i] % kTile;
    float* row = od + i * K;
    for (int64_t g = 0; g < G; ++g) {
      const uint8_t* wr = wd + ((t * G + g) * kTile + r) * b;
      const float s = half_to_float(sd[(t * G + g) * kTile + r]);
      for (int64_t j = 0; j < b; ++j) {
        row[g * 2 * b + 2 * j] = static_cast<float>(static_cast<int32_t>(wr[j] >> 4) - 8) * s;
        row[g * 2 * b + 2 * j + 1] = static_cast<float>(static_cast<int32_t>(wr[j] & 15) - 8) * s;
      }
    }
  }
  return out;
}

}  // namespace gemma_edge

EXECUTORCH_LIBRARY(gemma_edge, "tile8_head_a8.out", gemma_edge::tile8_head_a8_out);
EXECUTORCH_LIBRARY(gemma_edge, "tile8_lookup.out", gemma_edge::tile8_lookup_out);
