#include "grpo/decode_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define COHORT_DECODE_AVX2 1
#define COHORT_AVX2_FN __attribute__((target("avx2,fma")))
#endif

namespace cohort::grpo::decode_cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

bool cpu_has_avx2_fma() {
#ifdef COHORT_DECODE_AVX2
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

// ---- scalar loops -------------------------------------------------------------------------

float sum_squares_scalar(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]) * x[i];
  return float(s);
}

void scale_mul_scalar(const float* x, float r, const float* w, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

void silu_mul_scalar(const float* g, const float* u, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void exp_scalar(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// scores[h·stride + j] = q_h · k_j for the g query heads sharing one KV head.
void scores_scalar(const float* q, int64_t g, int64_t hd, const float* k, int64_t len,
                   float* scores, int64_t stride) {
  for (int64_t j = 0; j < len; ++j)
    for (int64_t h = 0; h < g; ++h) {
      float acc = 0;
      for (int64_t i = 0; i < hd; ++i) acc += q[h * hd + i] * k[j * hd + i];
      scores[h * stride + j] = acc;
    }
}

// out_h = Σ_j p[h·stride + j] · v_j
void weighted_sum_scalar(const float* p, int64_t g, int64_t stride, const float* v, int64_t len,
                         int64_t hd, float* out) {
  for (int64_t h = 0; h < g; ++h) {
    float* o = out + h * hd;
    std::fill(o, o + hd, 0.0f);
    for (int64_t j = 0; j < len; ++j) {
      const float pj = p[h * stride + j];
      for (int64_t i = 0; i < hd; ++i) o[i] += pj * v[j * hd + i];
    }
  }
}

// ---- AVX2 + FMA loops ---------------------------------------------------------------------
#ifdef COHORT_DECODE_AVX2

COHORT_AVX2_FN inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp on 8 lanes (Cephes' expf: n = round(x·log2 e), two-part ln 2 reduction, degree-6
// polynomial; about 1 ulp). Lanes below -88.37 (including -inf) give exactly 0.
COHORT_AVX2_FN inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-88.3762626647949f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, lo);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
  return _mm256_andnot_ps(under, y);
}

COHORT_AVX2_FN float sum_squares_avx2(const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(x0, x0, a0);
    a1 = _mm256_fmadd_ps(x1, x1, a1);
  }
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) s += x[i] * x[i];
  return s;
}

COHORT_AVX2_FN void scale_mul_avx2(const float* x, float r, const float* w, int64_t n, float* out) {
  const __m256 rv = _mm256_set1_ps(r);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(
        out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), rv), _mm256_loadu_ps(w + i)));
  for (; i < n; ++i) out[i] = x[i] * r * w[i];
}

COHORT_AVX2_FN void silu_mul_avx2(const float* g, const float* u, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp8(_mm256_xor_ps(gv, sign));
    const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// n is a multiple of 8 (the score rows are padded).
COHORT_AVX2_FN void exp_avx2(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(x + i, exp8(_mm256_loadu_ps(x + i)));
}

// hd is a multiple of 8. Each key row is loaded once for all g heads.
COHORT_AVX2_FN void scores_avx2(const float* q, int64_t g, int64_t hd, const float* k, int64_t len,
                                float* scores, int64_t stride) {
  for (int64_t j = 0; j < len; ++j) {
    const float* kj = k + j * hd;
    for (int64_t h = 0; h < g; ++h) {
      const float* qh = q + h * hd;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 16 <= hd; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), _mm256_loadu_ps(kj + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i + 8), _mm256_loadu_ps(kj + i + 8), a1);
      }
      if (i < hd) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + i), _mm256_loadu_ps(kj + i), a0);
      scores[h * stride + j] = hsum(_mm256_add_ps(a0, a1));
    }
  }
}

// Accumulates a block of NB·8 output columns in registers over all keys.
template <int NB>
COHORT_AVX2_FN inline void weighted_sum_block(const float* p, const float* v, int64_t len,
                                              int64_t hd, float* o) {
  __m256 acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_ps();
  for (int64_t j = 0; j < len; ++j) {
    const __m256 pj = _mm256_broadcast_ss(p + j);
    const float* vj = v + j * hd;
    for (int b = 0; b < NB; ++b) acc[b] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * b), acc[b]);
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_ps(o + 8 * b, acc[b]);
}

COHORT_AVX2_FN void weighted_sum_avx2(const float* p, int64_t g, int64_t stride, const float* v,
                                      int64_t len, int64_t hd, float* out) {
  for (int64_t h = 0; h < g; ++h) {
    int64_t c = 0;
    for (; c + 64 <= hd; c += 64)
      weighted_sum_block<8>(p + h * stride, v + c, len, hd, out + h * hd + c);
    for (; c < hd; c += 8) weighted_sum_block<1>(p + h * stride, v + c, len, hd, out + h * hd + c);
  }
}

#endif  // COHORT_DECODE_AVX2

// ---- dispatch -----------------------------------------------------------------------------

struct Loops {
  float (*sum_squares)(const float*, int64_t);
  void (*scale_mul)(const float*, float, const float*, int64_t, float*);
  void (*silu_mul)(const float*, const float*, int64_t, float*);
  void (*exp)(float*, int64_t);
  void (*scores)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t);
  void (*weighted_sum)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*);
};

constexpr Loops kScalar{sum_squares_scalar, scale_mul_scalar, silu_mul_scalar,
                        exp_scalar,         scores_scalar,    weighted_sum_scalar};
#ifdef COHORT_DECODE_AVX2
constexpr Loops kVector{sum_squares_avx2, scale_mul_avx2, silu_mul_avx2,
                        exp_avx2,         scores_avx2,    weighted_sum_avx2};
#endif

// The attention loops need head_dim % 8 == 0 for AVX2; norms and SiLU have scalar tails.
const Loops& loops(int64_t head_dim = 8) {
#ifdef COHORT_DECODE_AVX2
  if (cpu_has_avx2_fma() && head_dim % 8 == 0) return kVector;
#endif
  (void)head_dim;
  return kScalar;
}

// Rows per task for the row-wise kernels: enough work to be worth a thread.
int64_t row_grain(int64_t floats_per_row) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, floats_per_row));
}

}  // namespace

bool uses_avx2() { return &loops() != &kScalar; }

void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t d, float* out) {
  const Loops& f = loops();
  at::parallel_for(0, rows, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float var = f.sum_squares(x + r * d, d) / float(d);
      f.scale_mul(x + r * d, 1.0f / std::sqrt(var + eps), w, d, out + r * d);
    }
  });
}

void silu_mul(const float* gate_up, int64_t rows, int64_t inter, float* out) {
  const Loops& f = loops();
  at::parallel_for(0, rows, row_grain(inter), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      f.silu_mul(gate_up + r * 2 * inter, gate_up + r * 2 * inter + inter, inter, out + r * inter);
  });
}

void attention(const AttentionShape& s, const float* qkv, const float* cos, const float* sin,
               const float* key_bias, float* k_cache, float* v_cache, float* out) {
  const Loops& f = loops(s.head_dim);
  const int64_t hd = s.head_dim, half = hd / 2, g = s.heads / s.kv_heads;
  const int64_t len = s.start + 1, padded = (len + 7) / 8 * 8;
  const int64_t row_width = (s.heads + 2 * s.kv_heads) * hd;
  at::parallel_for(0, s.rows * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(g * hd + g * padded);
    float* q = buf.data();
    float* p = q + g * hd;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / s.kv_heads, kh = item % s.kv_heads;
      const float* row = qkv + r * row_width;
      const float* c = cos + r * hd;
      const float* sn = sin + r * hd;
      // x·cos + rotate_half(x)·sin, rounded operation by operation as the general path does.
      auto rope = [&](const float* x, float mul, float* y) {
        for (int64_t i = 0; i < half; ++i) y[i] = (x[i] * c[i] + -x[i + half] * sn[i]) * mul;
        for (int64_t i = half; i < hd; ++i) y[i] = (x[i] * c[i] + x[i - half] * sn[i]) * mul;
      };
      for (int64_t h = 0; h < g; ++h) rope(row + (kh * g + h) * hd, s.scale, q + h * hd);
      const int64_t offset = (r * s.kv_heads + kh) * s.max_len * hd;
      float* kc = k_cache + offset;
      float* vc = v_cache + offset;
      rope(row + (s.heads + kh) * hd, 1.0f, kc + s.start * hd);
      std::copy_n(row + (s.heads + s.kv_heads + kh) * hd, hd, vc + s.start * hd);

      f.scores(q, g, hd, kc, len, p, padded);
      const float* bias = key_bias + r * s.max_len;
      float inv_sum[64];
      std::vector<float> inv_big;
      float* inv = g <= 64 ? inv_sum : (inv_big.resize(g), inv_big.data());
      for (int64_t h = 0; h < g; ++h) {
        float* ph = p + h * padded;
        // The query's own key (position start) is always seen: bias 0 there.
        for (int64_t j = 0; j < s.start; ++j) ph[j] += bias[j];
        std::fill(ph + len, ph + padded, kNegInf);
        const float m = *std::max_element(ph, ph + len);
        for (int64_t j = 0; j < padded; ++j) ph[j] -= m;
        f.exp(ph, padded);
        float sum = 0;
        for (int64_t j = 0; j < len; ++j) sum += ph[j];
        inv[h] = 1.0f / sum;
      }
      float* o = out + (r * s.heads + kh * g) * hd;
      f.weighted_sum(p, g, padded, vc, len, hd, o);
      for (int64_t h = 0; h < g; ++h)
        for (int64_t i = 0; i < hd; ++i) o[h * hd + i] *= inv[h];
    }
  });
}

}  // namespace cohort::grpo::decode_cpu
