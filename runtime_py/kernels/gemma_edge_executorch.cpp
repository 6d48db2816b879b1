// ExecuTorch CPU kernels for gemma_edge's custom ops (fp32 activations; KV caches fp32, fp16 or q8).
// Semantics are those of the eager reference functions in models/ops.py; tests hold the two together.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#if defined(__SSE__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace gemma_edge {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;

namespace {

// Key j (absolute position kp) is visible to query position qp: causal i - W < j <= i, or
// bidirectional |i - j| <= W / 2; W == 0 means no window; kp < 0 marks an empty slot or padding.
inline bool visible(int64_t qp, int64_t kp, int64_t window, bool causal) {
  if (kp < 0) return false;
  if (causal) return kp <= qp && (window == 0 || qp - kp < window);
  return window == 0 || std::llabs(qp - kp) <= window / 2;
}

}  // namespace

namespace {

// A cache's row format: fp32, fp16, or q8 (models/ops.py q8_pack: D int8 codes in groups of 32,
// then the groups' fp16 scales, D + D/16 bytes).
enum class Fmt { F32, F16, Q8 };
constexpr int64_t kQ8Group = 32;

inline Fmt fmt_of(ScalarType t) {
  return t == ScalarType::Half ? Fmt::F16 : t == ScalarType::Char ? Fmt::Q8 : Fmt::F32;
}

// Dequantize one q8 row of D values into buf.
inline void q8_row_f32(const int8_t* p, int64_t D, float* buf) {
  const uint8_t* sc = reinterpret_cast<const uint8_t*>(p + D);
  for (int64_t g = 0; g < D / kQ8Group; ++g) {
    const float s = half_to_float(static_cast<uint16_t>(sc[2 * g] | (sc[2 * g + 1] << 8)));
    const int8_t* c = p + g * kQ8Group;
    float* o = buf + g * kQ8Group;
#if defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(s);
    for (int64_t i = 0; i < kQ8Group; i += 8) {
      const __m256i ci = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i)));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_cvtepi32_ps(ci), vs));
    }
#else
    for (int64_t i = 0; i < kQ8Group; ++i) o[i] = static_cast<float>(c[i]) * s;
#endif
  }
}

// Row `row` (of D values) of a cache as fp32: an fp32 cache is read in place, an fp16 or q8 one
// converted into `buf` (D).
inline const float* row_f32(const void* base, Fmt fmt, int64_t row, int64_t D, float* buf) {
  if (fmt == Fmt::F32) return static_cast<const float*>(base) + row * D;
  if (fmt == Fmt::Q8) {
    q8_row_f32(static_cast<const int8_t*>(base) + row * (D + 2 * (D / kQ8Group)), D, buf);
    return buf;
  }
  const uint16_t* h = static_cast<const uint16_t*>(base) + row * D;
  int64_t d = 0;
#if defined(__F16C__) && defined(__AVX__)
  for (; d + 8 <= D; d += 8) {
    _mm256_storeu_ps(buf + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + d))));
  }
#endif
  for (; d < D; ++d) buf[d] = half_to_float(h[d]);
  return buf;
}

// Keys and values of one source: (B, kvH, S, D) with positions kpos (B, S) (or, with kpos_shared,
// the same (S,) positions for every batch row).
struct KeySource {
  const void* k;  // rows in `fmt` (an fp16 or q8 KV cache)
  const void* v;
  const int64_t* kpos;
  int64_t S;
  bool kpos_shared;
  Fmt fmt;
  int64_t kpos_end = std::numeric_limits<int64_t>::max();  // keys at positions >= this are not read
};

// Scores, softmax and values of one work item: the `rep` query heads that share key/value head g, at
// one (b, t), over keys [k0, k1) of both sources in order. Each key and value row is read (and, from
// an fp16 cache, converted) once for all `rep` heads. Leaves, per head r, the chunk's max score m[r]
// (-inf when no key is visible), the sum of exp(score - m) l[r], and acc[r * D ...] the sum of
// exp(score - m) * v; returns how many keys were visible.
// Source i is read over its first n_read[i] slots (attend trims the slots past the last visible one).
int64_t attend_chunk(const float* const* qv, int64_t rep, int64_t D, int64_t b, int64_t g, int64_t kvH, int64_t qp,
                     const KeySource* src, const int64_t* n_read, int n_src, int64_t k0, int64_t k1, int64_t window,
                     double scale, double softcap, bool causal, float* score, float* row, float* m, float* l,
                     float* acc) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t n = k1 - k0;
  for (int64_t r = 0; r < rep; ++r) m[r] = neg_inf;
  int64_t n_vis = 0;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      std::fill(acc, acc + rep * D, 0.f);
      std::fill(l, l + rep, 0.f);
      if (n_vis == 0) break;
    }
    int64_t first = 0;  // where this source starts in the index over both sources
    for (int i = 0; i < n_src; first += n_read[i], ++i) {
      const KeySource& ks = src[i];
      const int64_t lo = std::max<int64_t>(k0, first) - first, hi = std::min<int64_t>(k1, first + n_read[i]) - first;
      if (lo >= hi) continue;
      const int64_t base = (b * kvH + g) * ks.S;  // the first row of this (b, g)
      const int64_t* kp = ks.kpos + (ks.kpos_shared ? 0 : b * ks.S);
      for (int64_t s = lo; s < hi; ++s) {
        const int64_t at = first + s - k0;  // within the chunk
        if (kp[s] >= ks.kpos_end || !visible(qp, kp[s], window, causal)) {
          if (pass == 0)
            for (int64_t r = 0; r < rep; ++r) score[r * n + at] = neg_inf;
          continue;
        }
        if (pass == 0) {
          const float* kv = row_f32(ks.k, ks.fmt, base + s, D, row);
          for (int64_t r = 0; r < rep; ++r) {
            const float* q = qv[r];
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < D; ++d) dot += q[d] * kv[d];
            float z = dot * static_cast<float>(scale);
            if (softcap > 0) z = static_cast<float>(softcap) * std::tanh(z / static_cast<float>(softcap));
            score[r * n + at] = z;
            m[r] = std::max(m[r], z);
          }
          ++n_vis;
        } else {
          const float* vv = row_f32(ks.v, ks.fmt, base + s, D, row);
          for (int64_t r = 0; r < rep; ++r) {
            const float p = std::exp(score[r * n + at] - m[r]);
            l[r] += p;
            float* a = acc + r * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) a[d] += p * vv[d];
          }
        }
      }
    }
  }
  return n_vis;
}

// out[b, h, t] = softmax over the visible keys of both sources (in order) of q . k, times v.
// One work item per (batch, key/value head, query) and chunk of keys: a decode step (one query) has
// few items, so its keys are split into chunks that the threadpool shares, each with its own max,
// merged after (as flash-decoding does).
// q is (B, H, T, D); the output (B, H, T, D), or with out_bthd (B, T, H, D).
void attend(const float* qd, int64_t B, int64_t H, int64_t T, int64_t D, int64_t kvH, const int64_t* qpd,
            const KeySource* src, int n_src, int64_t window, double scale, double softcap, bool causal, float* od,
            bool out_bthd = false) {
  const int64_t rep = H / kvH;  // (n_src is 1 or 2)
  // Each source is read up to its last slot that may be visible (a position >= 0 and below kpos_end):
  // a cache filled this far, a ring not yet wrapped. The chunks then split only keys that count.
  int64_t S_total = 0, n_read[2] = {0, 0};
  for (int i = 0; i < n_src; ++i) {
    const KeySource& ks = src[i];
    for (int64_t b = 0; b < (ks.kpos_shared ? 1 : B); ++b) {
      const int64_t* kp = ks.kpos + b * ks.S;
      for (int64_t s = ks.S - 1; s >= n_read[i]; --s) {
        if (kp[s] >= 0 && kp[s] < ks.kpos_end) {
          n_read[i] = s + 1;
          break;
        }
      }
    }
    S_total += n_read[i];
  }
  const int64_t rows = B * kvH * T;
  const int64_t C = rows >= 16 ? 1 : std::max<int64_t>(1, std::min<int64_t>(16, S_total / 64));
  const int64_t span = (S_total + C - 1) / C;
  // per (row, chunk): m (rep), l (rep), acc (rep * D), visible count
  std::vector<float> part(rows * C * rep * (D + 2));
  std::vector<int64_t> vis(rows * C);
  executorch::extension::parallel_for(0, rows * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> score(rep * span), row(D);
    std::vector<const float*> qv(rep);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r0 = item / C, c = item % C;
      const int64_t b = r0 / (kvH * T), g = (r0 / T) % kvH, t = r0 % T;
      for (int64_t r = 0; r < rep; ++r) qv[r] = qd + ((b * H + g * rep + r) * T + t) * D;
      float* p = part.data() + item * rep * (D + 2);
      const int64_t k0 = c * span, k1 = std::min(S_total, k0 + span);
      // (a chunk past the end, or with no visible key, counts 0 and the merge skips it)
      vis[item] = k0 < k1 ? attend_chunk(qv.data(), rep, D, b, g, kvH, qpd[t], src, n_read, n_src, k0, k1, window,
                                         scale, softcap, causal, score.data(), row.data(), p, p + rep, p + 2 * rep)
                          : 0;
    }
  });
  executorch::extension::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row(D);
    for (int64_t r0 = begin; r0 < end; ++r0) {
      const int64_t b = r0 / (kvH * T), g = (r0 / T) % kvH, t = r0 % T;
      int64_t n_vis = 0;
      for (int64_t c = 0; c < C; ++c) n_vis += vis[r0 * C + c];
      for (int64_t r = 0; r < rep; ++r) {
        const int64_t h = g * rep + r;
        float* o = od + (out_bthd ? (b * T + t) * H + h : (b * H + h) * T + t) * D;
        if (n_vis == 0) {
          // No visible key (a padded query): the reference's finite floor gives equal weights.
          std::fill(o, o + D, 0.f);
          for (int i = 0; i < n_src; ++i) {
            const int64_t base = (b * kvH + g) * src[i].S;
            for (int64_t s = 0; s < src[i].S; ++s) {
              const float* vv = row_f32(src[i].v, src[i].fmt, base + s, D, row.data());
              for (int64_t d = 0; d < D; ++d) o[d] += vv[d];
            }
          }
          int64_t S_all = 0;
          for (int i = 0; i < n_src; ++i) S_all += src[i].S;
          for (int64_t d = 0; d < D; ++d) o[d] /= static_cast<float>(S_all);
          continue;
        }
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < C; ++c) mx = std::max(mx, part[(r0 * C + c) * rep * (D + 2) + r]);
        float total = 0.f;
        std::fill(o, o + D, 0.f);
        for (int64_t c = 0; c < C; ++c) {
          const float* p = part.data() + (r0 * C + c) * rep * (D + 2);
          if (vis[r0 * C + c] == 0) continue;
          const float w = std::exp(p[r] - mx);
          total += w * p[rep + r];
          const float* a = p + 2 * rep + r * D;
          for (int64_t d = 0; d < D; ++d) o[d] += w * a[d];
        }
        const float inv = 1.f / total;
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
      }
    }
  });
}

}  // namespace

// q (B, H, T, D), k/v (B, kvH, S, D), q_pos (T,), k_pos (B, S) -> out (B, H, T, D)
Tensor& sliding_window_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& q_pos, const Tensor& k_pos,
                                     int64_t window, double scale, double softcap, bool causal,
                                     Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && k.scalar_type() == v.scalar_type() &&
                               (k.scalar_type() == ScalarType::Float || k.scalar_type() == ScalarType::Half),
                      InvalidArgument, out,
                      "gemma_edge::sliding_window_attention: fp32 q and fp32 or fp16 k/v expected");
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k_pos.dim() == 2, InvalidArgument,
                      out, "gemma_edge::sliding_window_attention: q/k/v must be 4-D, k_pos 2-D");
  ET_KERNEL_CHECK_MSG(ctx, q_pos.scalar_type() == ScalarType::Long && k_pos.scalar_type() == ScalarType::Long,
                      InvalidArgument, out, "gemma_edge::sliding_window_attention: int64 positions expected");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, out);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t kvH = k.size(1), S = k.size(2);
  ET_KERNEL_CHECK_MSG(ctx, kvH > 0 && H % kvH == 0 && k.size(3) == D && v.size(2) == S, InvalidArgument, out,
                      "gemma_edge::sliding_window_attention: shape mismatch");
  const KeySource src{k.const_data_ptr(), v.const_data_ptr(), k_pos.const_data_ptr<int64_t>(), S, false,
                      fmt_of(k.scalar_type())};
  attend(q.const_data_ptr<float>(), B, H, T, D, kvH, q_pos.const_data_ptr<int64_t>(), &src, 1, window, scale,
         softcap, causal, out.mutable_data_ptr<float>());
  return out;
}

namespace {

// One row of D values as a q8 row (models/ops.py q8_pack): per group of 32, d = max|x| / 127, codes
// roundf(x * (1/d)) (half away from zero; 0 when d is 0), as ggml-quants.c's quantize_row_q8_0,
// then d as fp16 (rounded to nearest even) bytes.
void q8_pack_row(const float* x, int64_t D, int8_t* out) {
  uint8_t* sc = reinterpret_cast<uint8_t*>(out + D);
  for (int64_t g = 0; g < D / kQ8Group; ++g) {
    const float* xg = x + g * kQ8Group;
    const float d = a8_group_scale(xg, kQ8Group);
    const float id = d > 0.f ? 1.f / d : 0.f;
    for (int64_t i = 0; i < kQ8Group; ++i) {
      out[g * kQ8Group + i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::round(xg[i] * id))));
    }
    const executorch::aten::Half h(d);
    uint16_t bits;
    std::memcpy(&bits, &h, 2);
    sc[2 * g] = static_cast<uint8_t>(bits & 0xff);
    sc[2 * g + 1] = static_cast<uint8_t>(bits >> 8);
  }
}

// The cache write's rows: k_rows/v_rows[bg, j] = kd/vd[bg, rows[j]] for bg < BG (batch x kv heads),
// each row D long, in the rows' type (fp16: rounded to nearest even, as torch's .to(float16); int8:
// q8 rows of D + D/16 bytes).
void take_rows(const float* kd, const float* vd, const int64_t* rows, int64_t BG, int64_t T, int64_t D,
               Tensor& k_rows, Tensor& v_rows) {
  const Fmt fmt = fmt_of(k_rows.scalar_type());
  const bool half = fmt == Fmt::F16;
  for (int64_t bg = 0; bg < BG; ++bg) {
    for (int64_t j = 0; j < T; ++j) {
      const int64_t from = (bg * T + rows[j]) * D, to = (bg * T + j) * D;
      if (fmt == Fmt::Q8) {
        const int64_t row_bytes = D + 2 * (D / kQ8Group), at = (bg * T + j) * row_bytes;
        q8_pack_row(kd + from, D, k_rows.mutable_data_ptr<int8_t>() + at);
        q8_pack_row(vd + from, D, v_rows.mutable_data_ptr<int8_t>() + at);
      } else if (half) {
        executorch::aten::Half* kh = k_rows.mutable_data_ptr<executorch::aten::Half>();
        executorch::aten::Half* vh = v_rows.mutable_data_ptr<executorch::aten::Half>();
        for (int64_t d = 0; d < D; ++d) {
          kh[to + d] = executorch::aten::Half(kd[from + d]);
          vh[to + d] = executorch::aten::Half(vd[from + d]);
        }
      } else {
        std::copy_n(kd + from, D, k_rows.mutable_data_ptr<float>() + to);
        std::copy_n(vd + from, D, v_rows.mutable_data_ptr<float>() + to);
      }
    }
  }
}

}  // namespace

// q (B, H, T, D), chunk k/v (B, kvH, T, D), ring k/v (B, kvH, W, D), q_pos (T,), ring_pos (B, W),
// src (T,) -> out (B, H, T, D): causal attention over (ring, chunk), read in place; k_rows/v_rows
// (B, kvH, T, D): the chunk rows at src, which the program then writes into the ring.
void ring_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& k_ring, const Tensor& v_ring, const Tensor& q_pos, const Tensor& ring_pos,
                        const Tensor& src_rows, int64_t window, double scale, double softcap, Tensor& out,
                        Tensor& k_rows, Tensor& v_rows) {
  const ScalarType ring_t = k_ring.scalar_type();
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && k.scalar_type() == ScalarType::Float &&
                               v.scalar_type() == ScalarType::Float && v_ring.scalar_type() == ring_t &&
                               (ring_t == ScalarType::Float || ring_t == ScalarType::Half) &&
                               k_rows.scalar_type() == ring_t && v_rows.scalar_type() == ring_t, InvalidArgument, ,
                      "gemma_edge::ring_attention: fp32 q/k/v, and rings and rows both fp32 or both fp16 expected");
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k_ring.dim() == 4 && v_ring.dim() == 4 &&
                               ring_pos.dim() == 2 && src_rows.dim() == 1, InvalidArgument, ,
                      "gemma_edge::ring_attention: q/k/v and rings must be 4-D, ring_pos 2-D, src 1-D");
  ET_KERNEL_CHECK_MSG(ctx, q_pos.scalar_type() == ScalarType::Long && ring_pos.scalar_type() == ScalarType::Long &&
                               src_rows.scalar_type() == ScalarType::Long, InvalidArgument, ,
                      "gemma_edge::ring_attention: int64 positions and rows expected");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, );
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(k_rows, k.sizes()) == Error::Ok, InvalidArgument, );
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(v_rows, v.sizes()) == Error::Ok, InvalidArgument, );
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t kvH = k.size(1), W = k_ring.size(2);
  ET_KERNEL_CHECK_MSG(ctx, kvH > 0 && H % kvH == 0 && k.size(2) == T && k.size(3) == D && v.size(2) == T &&
                               k_ring.size(1) == kvH && k_ring.size(3) == D && v_ring.size(2) == W &&
                               ring_pos.size(1) == W && src_rows.size(0) == T, InvalidArgument, ,
                      "gemma_edge::ring_attention: shape mismatch");
  const int64_t* rows = src_rows.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < T; ++j) {
    ET_KERNEL_CHECK_MSG(ctx, rows[j] >= 0 && rows[j] < T, InvalidArgument, ,
                        "gemma_edge::ring_attention: src[%" PRId64 "] = %" PRId64 " is not a chunk row (0..%" PRId64
                        ")", j, rows[j], T - 1);
  }
  const int64_t* qpd = q_pos.const_data_ptr<int64_t>();
  const KeySource src[2] = {
      {k_ring.const_data_ptr(), v_ring.const_data_ptr(), ring_pos.const_data_ptr<int64_t>(), W, false,
       fmt_of(ring_t)},
      {k.const_data_ptr<float>(), v.const_data_ptr<float>(), qpd, T, true, Fmt::F32},
  };
  attend(q.const_data_ptr<float>(), B, H, T, D, kvH, qpd, src, 2, window, scale, softcap, true,
         out.mutable_data_ptr<float>());
  take_rows(k.const_data_ptr<float>(), v.const_data_ptr<float>(), rows, B * kvH, T, D, k_rows, v_rows);
}

namespace {

// One head row x (D) -> y: RMSNorm with the zero-centred weight w (none when w is null), then
// rotate-half RoPE of the first `rot` channels with this position's cos/sin rows (the reference's
// rms_norm and apply_rope, in fp32).
void norm_rope_row(const float* x, int64_t D, const float* w, float eps, const float* c, const float* sn,
                   int64_t rot, float* y) {
  if (w != nullptr) {
    float ss = 0.f;
    for (int64_t d = 0; d < D; ++d) ss += x[d] * x[d];
    const float r = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    for (int64_t d = 0; d < D; ++d) y[d] = x[d] * r * (1.f + w[d]);
  } else {
    std::copy_n(x, D, y);
  }
  const int64_t half = rot / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = y[i], b = y[i + half];
    y[i] = a * c[i] - b * sn[i];
    y[i + half] = b * c[i + half] + a * sn[i + half];
  }
}

}  // namespace

// q (B, T, H*D), k/v (B, T, kvH*D) as projected; q_norm/k_norm (D,) or empty; cos/sin (T, rot);
// caches (B, kvH, S, D) fp32 or fp16, or (B, kvH, S, D + D/16) int8 q8 rows, as before the chunk;
// q_pos (T,); cache_pos (B, S) (a slot at a position >= q_pos[0] is stale: the chunk's own rows stand
// for it); src (T,) -> out (B, T, H*D); k_rows/v_rows (B, kvH, T, D, or D + D/16 for q8) in the
// caches' type: the chunk's normed, rotated k rows and its v rows at src, which the program then
// writes into the cache.
void rope_cache_attention_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& q_norm, const Tensor& k_norm, const Tensor& cos, const Tensor& sin,
                              const Tensor& k_cache, const Tensor& v_cache, const Tensor& q_pos,
                              const Tensor& cache_pos, const Tensor& src_rows, int64_t window, double scale,
                              double softcap, double eps, Tensor& out, Tensor& k_rows, Tensor& v_rows) {
  const ScalarType cache_t = k_cache.scalar_type();
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && k.scalar_type() == ScalarType::Float &&
                               v.scalar_type() == ScalarType::Float && cos.scalar_type() == ScalarType::Float &&
                               sin.scalar_type() == ScalarType::Float && q_norm.scalar_type() == ScalarType::Float &&
                               k_norm.scalar_type() == ScalarType::Float && v_cache.scalar_type() == cache_t &&
                               (cache_t == ScalarType::Float || cache_t == ScalarType::Half ||
                                cache_t == ScalarType::Char) &&
                               k_rows.scalar_type() == cache_t && v_rows.scalar_type() == cache_t, InvalidArgument, ,
                      "gemma_edge::rope_cache_attention: fp32 q/k/v/norms/tables, caches and rows all fp32, fp16 or "
                      "int8 (q8) expected");
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && k_cache.dim() == 4 &&
                               v_cache.dim() == 4 && cos.dim() == 2 && sin.dim() == 2 && cache_pos.dim() == 2 &&
                               src_rows.dim() == 1 && q_norm.dim() == 1 && k_norm.dim() == 1, InvalidArgument, ,
                      "gemma_edge::rope_cache_attention: q/k/v 3-D, caches 4-D, tables and cache_pos 2-D, src and "
                      "norms 1-D expected");
  ET_KERNEL_CHECK_MSG(ctx, q_pos.scalar_type() == ScalarType::Long && cache_pos.scalar_type() == ScalarType::Long &&
                               src_rows.scalar_type() == ScalarType::Long, InvalidArgument, ,
                      "gemma_edge::rope_cache_attention: int64 positions and rows expected");
  const int64_t B = q.size(0), T = q.size(1), kvH = k_cache.size(1), S = k_cache.size(2);
  const int64_t D = kvH > 0 ? k.size(2) / kvH : 0, H = D > 0 ? q.size(2) / D : 0, rot = cos.size(1);
  const bool q8 = cache_t == ScalarType::Char;
  const int64_t W = q8 ? D + 2 * (D / kQ8Group) : D;  // a cache row's width in its elements
  const bool norm = q_norm.numel() > 0;
  ET_KERNEL_CHECK_MSG(ctx, !q8 || D % kQ8Group == 0, InvalidArgument, ,
                      "gemma_edge::rope_cache_attention: a q8 cache needs a head dim that is a multiple of 32, got "
                      "%" PRId64, D);
  ET_KERNEL_CHECK_MSG(ctx, D > 0 && H > 0 && kvH > 0 && H % kvH == 0 && q.size(2) == H * D && k.size(0) == B &&
                               k.size(1) == T && k.size(2) == kvH * D && v.size(0) == B && v.size(1) == T &&
                               v.size(2) == kvH * D && k_cache.size(0) == B && k_cache.size(3) == W &&
                               v_cache.size(0) == B && v_cache.size(1) == kvH && v_cache.size(2) == S &&
                               v_cache.size(3) == W &&
                               cos.size(0) == T && sin.size(0) == T && sin.size(1) == rot && rot % 2 == 0 &&
                               rot <= D && cache_pos.size(0) == B && cache_pos.size(1) == S && src_rows.size(0) == T &&
                               q_pos.size(0) == T && (norm ? q_norm.size(0) == D && k_norm.size(0) == D
                                                           : k_norm.numel() == 0), InvalidArgument, ,
                      "gemma_edge::rope_cache_attention: shape mismatch");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, );
  const executorch::aten::SizesType rows_shape[4] = {static_cast<executorch::aten::SizesType>(B),
      static_cast<executorch::aten::SizesType>(kvH), static_cast<executorch::aten::SizesType>(T),
      static_cast<executorch::aten::SizesType>(W)};  // fmt: skip
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(k_rows, {rows_shape, 4}) == Error::Ok, InvalidArgument, );
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(v_rows, {rows_shape, 4}) == Error::Ok, InvalidArgument, );
  const int64_t* rows = src_rows.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < T; ++j) {
    ET_KERNEL_CHECK_MSG(ctx, rows[j] >= 0 && rows[j] < T, InvalidArgument, ,
                        "gemma_edge::rope_cache_attention: src[%" PRId64 "] = %" PRId64
                        " is not a chunk row (0..%" PRId64 ")", j, rows[j], T - 1);
  }
  // The chunk's heads normed and rotated into (B, heads, T, D), the layout attend reads.
  std::vector<float> qr(B * H * T * D), kr(B * kvH * T * D), vr(B * kvH * T * D);
  const float* qd = q.const_data_ptr<float>();
  const float* kd = k.const_data_ptr<float>();
  const float* vd = v.const_data_ptr<float>();
  const float* qw = norm ? q_norm.const_data_ptr<float>() : nullptr;
  const float* kw = norm ? k_norm.const_data_ptr<float>() : nullptr;
  const float* cd = cos.const_data_ptr<float>();
  const float* sd = sin.const_data_ptr<float>();
  const float e = static_cast<float>(eps);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const float *c = cd + t * rot, *sn = sd + t * rot;
      for (int64_t h = 0; h < H; ++h)
        norm_rope_row(qd + ((b * T + t) * H + h) * D, D, qw, e, c, sn, rot, qr.data() + ((b * H + h) * T + t) * D);
      for (int64_t g = 0; g < kvH; ++g) {
        const int64_t from = ((b * T + t) * kvH + g) * D, to = ((b * kvH + g) * T + t) * D;
        norm_rope_row(kd + from, D, kw, e, c, sn, rot, kr.data() + to);
        std::copy_n(vd + from, D, vr.data() + to);
      }
    }
  }
  const int64_t* qpd = q_pos.const_data_ptr<int64_t>();
  const KeySource src[2] = {
      {k_cache.const_data_ptr(), v_cache.const_data_ptr(), cache_pos.const_data_ptr<int64_t>(), S, false,
       fmt_of(cache_t), T > 0 ? qpd[0] : 0},  // slots at the chunk's positions or later: stale
      {kr.data(), vr.data(), qpd, T, true, Fmt::F32},
  };
  attend(qr.data(), B, H, T, D, kvH, qpd, src, 2, window, scale, softcap, true, out.mutable_data_ptr<float>(), true);
  take_rows(kr.data(), vr.data(), rows, B * kvH, T, D, k_rows, v_rows);
}

// x (B, T, L); gates (H, L/H, L/H) + (H, L/H); a_param (L,); pos (T,); h0 (B, L) -> y (B, T, L), h (B, L)
void rg_lru_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& gxw, const Tensor& gxb,
                const Tensor& gaw, const Tensor& gab, const Tensor& a_param, const Tensor& pos, const Tensor& h0,
                double c, Tensor& y, Tensor& h_out) {
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && h0.scalar_type() == ScalarType::Float,
                      InvalidArgument, , "gemma_edge::rg_lru: fp32 x and h0 expected");
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(y, x.sizes()) == Error::Ok, InvalidArgument, );
  ET_KERNEL_CHECK(ctx, executorch::runtime::resize_tensor(h_out, h0.sizes()) == Error::Ok, InvalidArgument, );
  const int64_t B = x.size(0), T = x.size(1), L = x.size(2), H = gxw.size(0), bw = L / H;
  const float* xd = x.const_data_ptr<float>();
  const float* wx = gxw.const_data_ptr<float>();
  const float* bx = gxb.const_data_ptr<float>();
  const float* wa = gaw.const_data_ptr<float>();
  const float* ba = gab.const_data_ptr<float>();
  const float* lam = a_param.const_data_ptr<float>();
  const int64_t* pd = pos.const_data_ptr<int64_t>();
  const float* h0d = h0.const_data_ptr<float>();
  float* yd = y.mutable_data_ptr<float>();
  float* hd = h_out.mutable_data_ptr<float>();
  std::vector<float> sp(L);
  for (int64_t l = 0; l < L; ++l) sp[l] = lam[l] > 20.f ? lam[l] : std::log1p(std::exp(lam[l]));  // softplus
  std::vector<float> gx(L), ga(L);
  for (int64_t b = 0; b < B; ++b) {
    float* h = hd + b * L;
    std::copy(h0d + b * L, h0d + (b + 1) * L, h);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = xd + (b * T + t) * L;
      // Block-diagonal gates x_head @ W[head] + b[head], one block per work item; the inner loop
      // runs along W's rows (contiguous) so it vectorises.
      executorch::extension::parallel_for(0, H, 1, [&](int64_t hb, int64_t he) {
        for (int64_t head = hb; head < he; ++head) {
          float* sx = gx.data() + head * bw;
          float* sa = ga.data() + head * bw;
          std::copy(bx + head * bw, bx + (head + 1) * bw, sx);
          std::copy(ba + head * bw, ba + (head + 1) * bw, sa);
          for (int64_t i = 0; i < bw; ++i) {
            const float xi = xt[head * bw + i];
            const float* rx = wx + (head * bw + i) * bw;
            const float* ra = wa + (head * bw + i) * bw;
#pragma omp simd
            for (int64_t j = 0; j < bw; ++j) {
              sx[j] += xi * rx[j];
              sa[j] += xi * ra[j];
            }
          }
          for (int64_t j = 0; j < bw; ++j) {
            sx[j] = 1.f / (1.f + std::exp(-sx[j]));
            sa[j] = 1.f / (1.f + std::exp(-sa[j]));
          }
        }
      });
      const bool reset = pd[t] == 0;
      float* yt = yd + (b * T + t) * L;
      for (int64_t l = 0; l < L; ++l) {
        const float log_a = static_cast<float>(-c) * ga[l] * sp[l];
        const float mult = reset ? 1.f : std::sqrt(1.f - std::exp(2.f * log_a));
        const float a = reset ? 0.f : std::exp(log_a);
        h[l] = a * h[l] + xt[l] * gx[l] * mult;
        yt[l] = h[l];
      }
    }
  }
}


// ---- table_head: logits from the (tied) embedding table, read where the lookup reads it --------
namespace {


#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out (..., N) for x (..., K).
Error resize_head_out(const Tensor& x, int64_t N, Tensor& out) {
  executorch::aten::SizesType sizes[executorch::runtime::kTensorDimensionLimit];
  for (int64_t d = 0; d + 1 < x.dim(); ++d) sizes[d] = x.size(d);
  sizes[x.dim() - 1] = static_cast<executorch::aten::SizesType>(N);
  return executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())});
}

// One output: sum_g scale[g] * sum_{i in g} (code_i - 8) * x_i over a row of packed 4-bit codes
// (byte j: code 2j in the high nibble, code 2j+1 in the low one, each + 8). xsum[g] = sum of x in g.
inline float row_dot_q4(const uint8_t* w, const uint16_t* sc, const float* x, const float* xsum, int64_t G,
                        int64_t gs) {
  float corr = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  if (gs % 32 == 0) {
    const __m128i m0f = _mm_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const float s = half_to_float(sc[g]);
      corr += s * xsum[g];
      __m256 dg = _mm256_setzero_ps();
      for (int64_t i = 0; i < gs; i += 32) {
        const uint8_t* p = w + (g * gs + i) / 2;
        const float* xp = x + g * gs + i;
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
        const __m128i lo = _mm_and_si128(b, m0f);
        const __m128i e0 = _mm_unpacklo_epi8(hi, lo), e1 = _mm_unpackhi_epi8(hi, lo);  // codes 0..15, 16..31
        dg = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e0)), _mm256_loadu_ps(xp), dg);
        dg = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e0, 8))), _mm256_loadu_ps(xp + 8), dg);
        dg = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(e1)), _mm256_loadu_ps(xp + 16), dg);
        dg = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(e1, 8))), _mm256_loadu_ps(xp + 24), dg);
      }
      acc = _mm256_fmadd_ps(dg, _mm256_set1_ps(s), acc);
    }
    return hsum(acc) - 8.f * corr;
  }
#endif
  float acc = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    const float s = half_to_float(sc[g]);
    float d = 0.f;
    for (int64_t i = 0; i < gs; i += 2) {
      const uint8_t b = w[(g * gs + i) / 2];
      d += static_cast<float>(b >> 4) * x[g * gs + i] + static_cast<float>(b & 0x0f) * x[g * gs + i + 1];
    }
    acc += s * d;
    corr += s * xsum[g];
  }
  return acc - 8.f * corr;
}

// int8 codes, one half scale per group.
inline float row_dot_q8(const int8_t* w, const uint16_t* sc, const float* x, int64_t G, int64_t gs) {
  float acc = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    const float s = half_to_float(sc[g]);
    const int8_t* wg = w + g * gs;
    const float* xg = x + g * gs;
    float d = 0.f;
#pragma omp simd reduction(+ : d)
    for (int64_t i = 0; i < gs; ++i) d += static_cast<float>(wg[i]) * xg[i];
    acc += s * d;
  }
  return acc;
}

inline float row_dot_f32(const float* w, const float* x, int64_t K) {
  float d = 0.f;
#pragma omp simd reduction(+ : d)
  for (int64_t i = 0; i < K; ++i) d += w[i] * x[i];
  return d;
}

}  // namespace

// x (..., K) fp32; weight: bits 4 -> uint8 (N, K/2) packed as quantized_decomposed::embedding_4bit
// reads it, bits 8 -> int8 (N, K), bits 32 -> fp32 (N, K); scales: half (N, G) for bits 4/8
// (ignored for 32) -> out (..., N) = x @ dequantized(weight)^T.
Tensor& table_head_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& scales,
                       int64_t bits, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && x.dim() >= 1 && weight.dim() == 2,
                      InvalidArgument, out, "gemma_edge::table_head: fp32 x (..., K) and a 2-D weight expected");
  const int64_t K = x.size(x.dim() - 1), N = weight.size(0);
  const bool q = bits == 4 || bits == 8;
  ET_KERNEL_CHECK_MSG(ctx, bits == 4 || bits == 8 || bits == 32, InvalidArgument, out,
                      "gemma_edge::table_head: bits must be 4, 8 or 32, got %" PRId64, bits);
  ET_KERNEL_CHECK_MSG(ctx, weight.size(1) * (bits == 4 ? 2 : 1) == K, InvalidArgument, out,
                      "gemma_edge::table_head: weight has %" PRId64 " columns for K = %" PRId64 " at %" PRId64 " bits",
                      static_cast<int64_t>(weight.size(1)), K, bits);
  ET_KERNEL_CHECK_MSG(ctx, weight.scalar_type() == (bits == 4 ? ScalarType::Byte : bits == 8 ? ScalarType::Char
                                                                                                : ScalarType::Float),
                      InvalidArgument, out, "gemma_edge::table_head: weight dtype does not match bits");
  int64_t G = 1;
  if (q) {
    ET_KERNEL_CHECK_MSG(ctx, scales.scalar_type() == ScalarType::Half && scales.dim() == 2 && scales.size(0) == N &&
                                 scales.size(1) > 0 && K % scales.size(1) == 0, InvalidArgument, out,
                        "gemma_edge::table_head: half scales (N, G) with G dividing K expected");
    G = scales.size(1);
  }
  const int64_t gs = K / G;
  ET_KERNEL_CHECK_MSG(ctx, bits != 4 || gs % 2 == 0, InvalidArgument, out,
                      "gemma_edge::table_head: 4-bit groups must be even");
  ET_KERNEL_CHECK(ctx, resize_head_out(x, N, out) == Error::Ok, InvalidArgument, out);
  const int64_t M = x.numel() / K;
  const float* xd = x.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();
  const uint16_t* sd = q ? static_cast<const uint16_t*>(scales.const_data_ptr()) : nullptr;
  std::vector<float> xsum(M * G, 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t i = 0; i < gs; ++i) xsum[m * G + g] += xd[m * K + g * gs + i];
  const void* wd = weight.const_data_ptr();
  // Rows in blocks (each block reads its slice of the table once for every x row). With several x
  // rows (prefill) a quantized row is dequantized once into fp32 and dotted with each of them.
  executorch::extension::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> row(q && M > 1 ? K : 0);
    for (int64_t n = begin; n < end; ++n) {
      if (q && M > 1) {
        for (int64_t g = 0; g < G; ++g) {
          const float s = half_to_float(sd[n * G + g]);
          for (int64_t i = 0; i < gs; ++i) {
            const int64_t c = g * gs + i;
            float code;
            if (bits == 4) {
              const uint8_t b = static_cast<const uint8_t*>(wd)[n * (K / 2) + c / 2];
              code = static_cast<float>((c % 2 == 0 ? b >> 4 : b & 0x0f)) - 8.f;
            } else {
              code = static_cast<float>(static_cast<const int8_t*>(wd)[n * K + c]);
            }
            row[c] = code * s;
          }
        }
        for (int64_t m = 0; m < M; ++m) od[m * N + n] = row_dot_f32(row.data(), xd + m * K, K);
        continue;
      }
      for (int64_t m = 0; m < M; ++m) {
        const float* xm = xd + m * K;
        float v;
        if (bits == 4) {
          v = row_dot_q4(static_cast<const uint8_t*>(wd) + n * (K / 2), sd + n * G, xm, xsum.data() + m * G, G, gs);
        } else if (bits == 8) {
          v = row_dot_q8(static_cast<const int8_t*>(wd) + n * K, sd + n * G, xm, G, gs);
        } else {
          v = row_dot_f32(static_cast<const float*>(wd) + n * K, xm, K);
        }
        od[m * N + n] = v;
      }
    }
  });
  return out;
}

// ---- table_head_a8: the 4-bit table against int8 activations (the 8da4w recipe's head) ----------
// x is quantized per group of the table's group size gs, as models' eager op does
// (export/executorch_backend/table.py quantize_groups): s = max|x_g| / 127, q = round_half_even(x / s)
// (all-zero group: s = 0, q = 0). The row's dot is then exact in int32 per group:
// out = sum_g s_w[g] * s_x[g] * (sum_i c_i q_i - 8 sum_i q_i), with c_i = code_i + 8 in 0..15.
namespace {

// The AVX-512 path (VNNI, groups of 32) works on pairs of groups: a pair's 32 code bytes become one
// 512-bit vector of nibbles, [high nibbles of g0, of g1, low nibbles of g0, of g1], against x in the
// same order, so one VNNI dot gives 16 int32 lanes, each within one group. The lanes start from
// -8 * (the sum of their 4 q) (the codes' offset of 8, exact in int32) and are scaled per lane.
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512F__)
#define GEMMA_EDGE_A8_AVX512 1
#endif

// One x row quantized for row_dot_q4_q8 / row_dot_q4_q8_avx512: q in the codes' nibble order (per 32
// values: the 16 even ones, which meet the high nibbles, then the 16 odd ones; on the AVX-512 path
// per pair of groups as above, and a last unpaired group as one block); s_x and 8 * sum(q) per
// group; n8q, on the AVX-512 path, -8 * the sum of each 4 consecutive q of the pairs.
struct QuantRow {
  std::vector<int8_t> q;
  std::vector<float> sx, c8;
  std::vector<int32_t> n8q;
};

// Whether row_dot_q4_q8 takes its SIMD path (and so reads q in the nibble order) for groups of gs.
inline bool simd_q4_q8(int64_t gs) {
#if defined(__AVX2__) && defined(__FMA__)
  return gs % 32 == 0;
#else
  (void)gs;
  return false;
#endif
}

inline bool avx512_q4_q8(int64_t gs) {
#if defined(GEMMA_EDGE_A8_AVX512)
  return gs == 32;
#else
  (void)gs;
  return false;
#endif
}

void quantize_row(const float* x, int64_t K, int64_t gs, QuantRow& r) {
  const int64_t G = K / gs;
  const bool pairs = avx512_q4_q8(gs);
  r.q.assign(K, 0);
  r.sx.assign(G, 0.f);
  r.c8.assign(G, 0.f);
  for (int64_t g = 0; g < G; ++g) {
    const float* xg = x + g * gs;
    const float s = a8_group_scale(xg, gs);
    r.sx[g] = s;
    if (s == 0.f) continue;
    int32_t sum = 0;
    for (int64_t i = 0; i < gs; ++i) {
      const int32_t v = a8_code(xg[i], s);
      sum += v;
      const int64_t b = i / 32 * 32, j = i % 32;
      int64_t pos = g * gs + i;
      if (pairs && (g | 1) < G) {  // in a pair: [even g0, even g1, odd g0, odd g1], 16 each
        pos = g / 2 * 64 + (j % 2 == 0 ? 0 : 32) + (g % 2) * 16 + j / 2;
      } else if (simd_q4_q8(gs)) {  // within its block of 32, even -> i/2, odd -> 16 + i/2
        pos = g * gs + b + (j % 2 == 0 ? j / 2 : 16 + j / 2);
      }
      r.q[pos] = static_cast<int8_t>(v);
    }
    r.c8[g] = 8.f * static_cast<float>(sum);
  }
  if (pairs) {
    const int64_t lanes = G / 2 * 16;
    r.n8q.assign(lanes, 0);
    for (int64_t l = 0; l < lanes; ++l)
      r.n8q[l] = -8 * (r.q[4 * l] + r.q[4 * l + 1] + r.q[4 * l + 2] + r.q[4 * l + 3]);
  }
}

constexpr int64_t kPrefetchRows = 16;

inline float row_dot_q4_q8(const uint8_t* w, const uint16_t* sc, const QuantRow& x, int64_t G, int64_t gs,
                           float* f) {
  for (int64_t g = 0; g < G; ++g) f[g] = half_to_float(sc[g]) * x.sx[g];
  float corr = 0.f;
  for (int64_t g = 0; g < G; ++g) corr += f[g] * x.c8[g];
#if defined(__AVX2__) && defined(__FMA__)
  if (simd_q4_q8(gs)) {
    const __m128i m0f = _mm_set1_epi8(0x0f);
#if !(defined(__AVX512VNNI__) && defined(__AVX512VL__)) && !defined(__AVXVNNI__)
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    __m256 acc = _mm256_setzero_ps();
    const int8_t* q = x.q.data();
    for (int64_t g = 0; g < G; ++g) {
      __m256i d = _mm256_setzero_si256();
      for (int64_t i = 0; i < gs; i += 32) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + (g * gs + i) / 2));
        const __m256i c = _mm256_set_m128i(_mm_and_si128(b, m0f), _mm_and_si128(_mm_srli_epi16(b, 4), m0f));
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + g * gs + i));
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
        d = _mm256_dpbusd_epi32(d, c, xv);
#elif defined(__AVXVNNI__)
        d = _mm256_dpbusd_avx_epi32(d, c, xv);
#else
        d = _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(c, xv), ones));  // |pair| <= 3810
#endif
      }
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(f[g]), acc);
    }
    return hsum(acc) - corr;
  }
#endif
  float acc = 0.f;
  for (int64_t g = 0; g < G; ++g) {
    int32_t d = 0;
    for (int64_t i = 0; i < gs; i += 2) {
      const uint8_t b = w[(g * gs + i) / 2];
      d += static_cast<int32_t>(b >> 4) * x.q[g * gs + i] + static_cast<int32_t>(b & 0x0f) * x.q[g * gs + i + 1];
    }
    acc += static_cast<float>(d) * f[g];
  }
  return acc - corr;
}

#if defined(GEMMA_EDGE_A8_AVX512)
// One output of the AVX-512 path (gs == 32): per 16 groups, the row's fp16 scales times s_x as one
// vector; per pair, one VNNI dot and one FMA against those scales spread over the pair's lanes. The
// hardware prefetcher keeps up with the row stream here (~25 GB/s on 2 cores of a Zen 4 EPYC, the
// bandwidth a streaming read gets), so there is no software prefetch.
inline float row_dot_q4_q8_avx512(const uint8_t* w, const uint16_t* sc, const QuantRow& x, int64_t G) {
  const int64_t paired = G / 2 * 2;
  const __m512i m0f = _mm512_set1_epi8(0x0f);
  const __m512i lane_group = _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
  const int8_t* q = x.q.data();
  const int32_t* n8q = x.n8q.data();
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < paired; g0 += 16) {
    const int64_t ng = std::min<int64_t>(16, paired - g0);
    const __mmask16 km = static_cast<__mmask16>((1u << ng) - 1);
    const __m512 f = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, sc + g0)),
                                   _mm512_maskz_loadu_ps(km, x.sx.data() + g0));
    __m512i idx = lane_group;
    for (int64_t p = g0 / 2; p < (g0 + ng) / 2; ++p) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + p * 32));
      const __m512i c =
          _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_srli_epi16(b, 4)), b, 1), m0f);
      const __m512i d = _mm512_dpbusd_epi32(_mm512_loadu_si512(n8q + p * 16), c, _mm512_loadu_si512(q + p * 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(idx, f), acc);
      idx = _mm512_add_epi32(idx, _mm512_set1_epi32(2));
    }
  }
  float out = _mm512_reduce_add_ps(acc);
  if (paired < G) {  // the last group, unpaired: one 256-bit block, codes in 0..15, less 8 * sum(q)
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + paired * 16));
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m256i c = _mm256_set_m128i(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
    const __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c,
                                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + paired * 32)));
    const float fg = half_to_float(sc[paired]) * x.sx[paired];
    out += fg * static_cast<float>(_mm512_reduce_add_epi32(_mm512_zextsi256_si512(d))) - fg * x.c8[paired];
  }
  return out;
}
#endif

}  // namespace

// x (..., K) fp32; weight uint8 (N, K/2) 4-bit codes as table_head; scales half (N, G) -> out (..., N).
Tensor& table_head_a8_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, const Tensor& scales,
                          Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && x.dim() >= 1 && weight.dim() == 2 &&
                               weight.scalar_type() == ScalarType::Byte, InvalidArgument, out,
                      "gemma_edge::table_head_a8: fp32 x (..., K) and a uint8 (N, K/2) weight expected");
  const int64_t K = x.size(x.dim() - 1), N = weight.size(0);
  ET_KERNEL_CHECK_MSG(ctx, weight.size(1) * 2 == K, InvalidArgument, out,
                      "gemma_edge::table_head_a8: weight has %" PRId64 " columns for K = %" PRId64,
                      static_cast<int64_t>(weight.size(1)), K);
  ET_KERNEL_CHECK_MSG(ctx, scales.scalar_type() == ScalarType::Half && scales.dim() == 2 && scales.size(0) == N &&
                               scales.size(1) > 0 && K % scales.size(1) == 0 && (K / scales.size(1)) % 2 == 0,
                      InvalidArgument, out, "gemma_edge::table_head_a8: half scales (N, G), even groups, expected");
  const int64_t G = scales.size(1), gs = K / G;
  ET_KERNEL_CHECK(ctx, resize_head_out(x, N, out) == Error::Ok, InvalidArgument, out);
  const int64_t M = x.numel() / K;
  const float* xd = x.const_data_ptr<float>();
  float* od = out.mutable_data_ptr<float>();
  const uint16_t* sd = static_cast<const uint16_t*>(scales.const_data_ptr());
  const uint8_t* wd = static_cast<const uint8_t*>(weight.const_data_ptr());
  std::vector<QuantRow> xq(M);
  for (int64_t m = 0; m < M; ++m) quantize_row(xd + m * K, K, gs, xq[m]);
  // Rows in blocks; a block's rows stay in cache while every x row meets them.
  const int64_t row_bytes = K / 2;
#if defined(GEMMA_EDGE_A8_AVX512)
  if (avx512_q4_q8(gs)) {
    executorch::extension::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n)
        for (int64_t m = 0; m < M; ++m) od[m * N + n] = row_dot_q4_q8_avx512(wd + n * row_bytes, sd + n * G, xq[m], G);
    });
    return out;
  }
#endif
  executorch::extension::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    std::vector<float> f(G);
    for (int64_t n = begin; n < end; ++n) {
#if defined(__SSE__)
      // The table streams from memory once per token: ask for a row well ahead (latency, not
      // bandwidth, bounds one core's read here).
      if (n + kPrefetchRows < N) {
        const char* pw = reinterpret_cast<const char*>(wd + (n + kPrefetchRows) * row_bytes);
        for (int64_t o = 0; o < row_bytes; o += 64) _mm_prefetch(pw + o, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(sd + (n + kPrefetchRows) * G), _MM_HINT_T0);
      }
#endif
      for (int64_t m = 0; m < M; ++m)
        od[m * N + n] = row_dot_q4_q8(wd + n * row_bytes, sd + n * G, xq[m], G, gs, f.data());
    }
  });
  return out;
}

namespace {

// rg_lru.out returns two tensors, which the unboxed registration macro cannot express. The boxed
// stack holds the 9 inputs, then y and h, then the aggregate return (a duplicate, ignored).
void rg_lru_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  ET_KERNEL_CHECK_MSG(ctx, stack.size() == 12, InvalidProgram, , "gemma_edge::rg_lru.out: expected 12 stack "
                      "entries, got %zu", static_cast<size_t>(stack.size()));
  rg_lru_out(ctx, stack[0]->toTensor(), stack[1]->toTensor(), stack[2]->toTensor(), stack[3]->toTensor(),
             stack[4]->toTensor(), stack[5]->toTensor(), stack[6]->toTensor(), stack[7]->toTensor(),
             stack[8]->toDouble(), stack[9]->toTensor(), stack[10]->toTensor());
}

const auto rg_lru_registration = executorch::runtime::register_kernel(
    executorch::runtime::Kernel("gemma_edge::rg_lru.out", rg_lru_out_boxed));

// ring_attention.out: 11 inputs, then out, k_rows, v_rows, then the aggregate return (ignored).
void ring_attention_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  ET_KERNEL_CHECK_MSG(ctx, stack.size() == 15, InvalidProgram, , "gemma_edge::ring_attention.out: expected 15 "
                      "stack entries, got %zu", static_cast<size_t>(stack.size()));
  ring_attention_out(ctx, stack[0]->toTensor(), stack[1]->toTensor(), stack[2]->toTensor(), stack[3]->toTensor(),
                     stack[4]->toTensor(), stack[5]->toTensor(), stack[6]->toTensor(), stack[7]->toTensor(),
                     stack[8]->toInt(), stack[9]->toDouble(), stack[10]->toDouble(), stack[11]->toTensor(),
                     stack[12]->toTensor(), stack[13]->toTensor());
}

const auto ring_attention_registration = executorch::runtime::register_kernel(
    executorch::runtime::Kernel("gemma_edge::ring_attention.out", ring_attention_out_boxed));

// rope_cache_attention.out: 16 inputs, then out, k_rows, v_rows, then the aggregate return (ignored).
void rope_cache_attention_out_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  ET_KERNEL_CHECK_MSG(ctx, stack.size() == 20, InvalidProgram, ,
                      "gemma_edge::rope_cache_attention.out: expected 20 stack entries, got %zu",
                      static_cast<size_t>(stack.size()));
  rope_cache_attention_out(
      ctx, stack[0]->toTensor(), stack[1]->toTensor(), stack[2]->toTensor(), stack[3]->toTensor(), stack[4]->toTensor(),
      stack[5]->toTensor(), stack[6]->toTensor(), stack[7]->toTensor(), stack[8]->toTensor(), stack[9]->toTensor(),
      stack[10]->toTensor(), stack[11]->toTensor(), stack[12]->toInt(), stack[13]->toDouble(), stack[14]->toDouble(),
      stack[15]->toDouble(), stack[16]->toTensor(), stack[17]->toTensor(), stack[18]->toTensor());
}

const auto rope_cache_attention_registration = executorch::runtime::register_kernel(
    executorch::runtime::Kernel("gemma_edge::rope_cache_attention.out", rope_cache_attention_out_boxed));

}  // namespace
}  // namespace gemma_edge

EXECUTORCH_LIBRARY(gemma_edge, "sliding_window_attention.out", gemma_edge::sliding_window_attention_out);
EXECUTORCH_LIBRARY(gemma_edge, "table_head.out", gemma_edge::table_head_out);
EXECUTORCH_LIBRARY(gemma_edge, "table_head_a8.out", gemma_edge::table_head_a8_out);
