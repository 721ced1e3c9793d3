// Fine-grained E4M3 quantization on the CPU: tiling, scales, threading and ISA dispatch.
// The per-element math is fp8.h's; the inner loops are in cpu_kernels.h's tables.
#include "kernels/quantize.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/check.h"
#include "kernels/cpu_kernels.h"
#include "kernels/fp8.h"

namespace cohort::kernels {
namespace detail {
namespace {

float amax_scalar(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = abs_bits(float_bits(x[i]));
    m = b > m ? b : m;
  }
  return bits_float(m);
}

void amax_accumulate_scalar(const float* x, int64_t n, float* acc) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = abs_bits(float_bits(x[i]));
    const uint32_t a = float_bits(acc[i]);
    acc[i] = bits_float(b > a ? b : a);
  }
}

void quantize_scalar(const float* x, int64_t n, float scale, uint8_t* q) {
  for (int64_t i = 0; i < n; ++i) q[i] = e4m3_from_float(x[i] / scale);
}

void dequantize_scalar(const uint8_t* q, int64_t n, float scale, float* x) {
  for (int64_t i = 0; i < n; ++i) x[i] = e4m3_to_float(q[i]) * scale;
}

void fake_quantize_scalar(const float* x, int64_t n, float scale, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = e4m3_to_float(e4m3_from_float(x[i] / scale)) * scale;
}

void fake_quantize_scales_scalar(const float* x, int64_t n, const float* scales, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = e4m3_to_float(e4m3_from_float(x[i] / scales[i])) * scales[i];
  }
}

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

const CpuKernels* initial_kernels() {
  const char* forced = std::getenv("COHORT_CPU_ISA");
  if (forced != nullptr && std::string(forced) == "scalar") return &scalar_kernels();
  if (avx2_kernels() != nullptr && cpu_has_avx2()) return avx2_kernels();
  return &scalar_kernels();
}

std::atomic<const CpuKernels*>& active_slot() {
  static std::atomic<const CpuKernels*> slot{initial_kernels()};
  return slot;
}

}  // namespace

const CpuKernels& scalar_kernels() {
  static const CpuKernels k{amax_scalar,          quantize_scalar,
                            dequantize_scalar,    fake_quantize_scalar,
                            fake_quantize_scales_scalar, amax_accumulate_scalar};
  return k;
}

#if !defined(COHORT_KERNELS_HAVE_AVX2)
const CpuKernels* avx2_kernels() { return nullptr; }
#endif

const CpuKernels& active_kernels() { return *active_slot().load(std::memory_order_relaxed); }

}  // namespace detail

namespace {

using detail::active_kernels;
using detail::CpuKernels;

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = int64_t{1} << 15;

void check_shape(int64_t rows, int64_t cols) {
  COHORT_CHECK(rows >= 0 && cols >= 0, "negative matrix shape");
}

// 128x128 blocks are processed in units of one 128-row strip x up to 32 blocks (4096 columns):
// rows are read in order (prefetch-friendly, unlike a block-by-block walk with a row stride), and
// a unit (<= 2 MB) stays in L2/L3 between the amax pass and the quantization pass.
constexpr int64_t kBlocksPerUnit = 32;

struct BlockUnit {
  int64_t r0, r1, j0, j1;  // rows [r0, r1), block columns [j0, j1)
};

BlockUnit block_unit(int64_t u, int64_t rows, int64_t bc) {
  const int64_t groups = ceil_div(bc, kBlocksPerUnit);
  const int64_t r0 = (u / groups) * kQuantTile, j0 = (u % groups) * kBlocksPerUnit;
  return {r0, std::min(rows, r0 + kQuantTile), j0, std::min(bc, j0 + kBlocksPerUnit)};
}

int64_t block_unit_count(int64_t rows, int64_t cols) {
  return ceil_div(rows, kQuantTile) * ceil_div(ceil_div(cols, kQuantTile), kBlocksPerUnit);
}

// Scales of the blocks of one unit, with the NaN rule of amax.
void block_unit_scales(const CpuKernels& k, const float* w, int64_t cols, const BlockUnit& u,
                       float* scale) {
  uint32_t amax[kBlocksPerUnit] = {};
  for (int64_t r = u.r0; r < u.r1; ++r) {
    for (int64_t j = u.j0; j < u.j1; ++j) {
      const int64_t c0 = j * kQuantTile, n = std::min(kQuantTile, cols - c0);
      const uint32_t b = detail::float_bits(k.amax(w + r * cols + c0, n));
      amax[j - u.j0] = std::max(amax[j - u.j0], b);
    }
  }
  for (int64_t j = u.j0; j < u.j1; ++j) {
    scale[j - u.j0] = e4m3_scale_from_amax(detail::bits_float(amax[j - u.j0]));
  }
}

}  // namespace

void quantize_e4m3_tile128(const float* x, int64_t rows, int64_t cols, uint8_t* q,
                           float* scales) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  const int64_t tpr = tile128_count_per_row(cols);
  const int64_t total = rows * tpr;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t r = t / tpr, j = t % tpr, c0 = j * kQuantTile;
    const int64_t n = std::min(kQuantTile, cols - c0);
    const float* xs = x + r * cols + c0;
    const float s = e4m3_scale_from_amax(k.amax(xs, n));
    scales[tile128_scale_index(r, j, rows)] = s;
    k.quantize(xs, n, s, q + r * cols + c0);
  }
}

void dequantize_e4m3_tile128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                             float* x) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  const int64_t tpr = tile128_count_per_row(cols);
  const int64_t total = rows * tpr;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t r = t / tpr, j = t % tpr, c0 = j * kQuantTile;
    const int64_t n = std::min(kQuantTile, cols - c0);
    k.dequantize(q + r * cols + c0, n, scales[tile128_scale_index(r, j, rows)], x + r * cols + c0);
  }
}

void fake_quantize_e4m3_tile128(const float* x, int64_t rows, int64_t cols, float* out) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  const int64_t tpr = tile128_count_per_row(cols);
  const int64_t total = rows * tpr;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t r = t / tpr, c0 = (t % tpr) * kQuantTile;
    const int64_t n = std::min(kQuantTile, cols - c0);
    const float* xs = x + r * cols + c0;
    k.fake_quantize(xs, n, e4m3_scale_from_amax(k.amax(xs, n)), out + r * cols + c0);
  }
}

void fake_quantize_e4m3_tile128_cols(const float* x, int64_t rows, int64_t cols, float* out) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  // Work unit: 128 rows x a chunk of columns, whose per-column amax fits in L1.
  constexpr int64_t kChunk = 512;
  const int64_t row_tiles = ceil_div(rows, kQuantTile);
  const int64_t chunks = ceil_div(cols, kChunk);
  const int64_t total = row_tiles * chunks;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t u = 0; u < total; ++u) {
    const int64_t r0 = (u / chunks) * kQuantTile, r1 = std::min(rows, r0 + kQuantTile);
    const int64_t c0 = (u % chunks) * kChunk, n = std::min(kChunk, cols - c0);
    float scale[kChunk] = {};  // zero bits: the identity of the amax
    for (int64_t r = r0; r < r1; ++r) k.amax_accumulate(x + r * cols + c0, n, scale);
    for (int64_t c = 0; c < n; ++c) scale[c] = e4m3_scale_from_amax(scale[c]);
    for (int64_t r = r0; r < r1; ++r) {
      k.fake_quantize_scales(x + r * cols + c0, n, scale, out + r * cols + c0);
    }
  }
}

void quantize_e4m3_block128(const float* w, int64_t rows, int64_t cols, uint8_t* q,
                            float* scales) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  const int64_t br = ceil_div(rows, kQuantTile), bc = ceil_div(cols, kQuantTile);
  const int64_t ld = block128_scale_ld(cols);
  for (int64_t i = 0; i < br; ++i) {
    for (int64_t j = bc; j < ld; ++j) scales[i * ld + j] = 1.0f;
  }
  const int64_t units = block_unit_count(rows, cols);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t ui = 0; ui < units; ++ui) {
    const BlockUnit u = block_unit(ui, rows, bc);
    float s[kBlocksPerUnit];
    block_unit_scales(k, w, cols, u, s);
    for (int64_t j = u.j0; j < u.j1; ++j) scales[(u.r0 / kQuantTile) * ld + j] = s[j - u.j0];
    for (int64_t r = u.r0; r < u.r1; ++r) {
      for (int64_t j = u.j0; j < u.j1; ++j) {
        const int64_t c0 = j * kQuantTile, n = std::min(kQuantTile, cols - c0);
        k.quantize(w + r * cols + c0, n, s[j - u.j0], q + r * cols + c0);
      }
    }
  }
}

void dequantize_e4m3_block128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                              float* w) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  const int64_t bc = ceil_div(cols, kQuantTile);
  const int64_t units = block_unit_count(rows, cols);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t ui = 0; ui < units; ++ui) {
    const BlockUnit u = block_unit(ui, rows, bc);
    for (int64_t r = u.r0; r < u.r1; ++r) {
      for (int64_t j = u.j0; j < u.j1; ++j) {
        const int64_t c0 = j * kQuantTile, n = std::min(kQuantTile, cols - c0);
        k.dequantize(q + r * cols + c0, n, scales[block128_scale_index(u.r0 / kQuantTile, j, cols)],
                     w + r * cols + c0);
      }
    }
  }
}

void fake_quantize_e4m3_block128(const float* w, int64_t rows, int64_t cols, float* out) {
  check_shape(rows, cols);
  const CpuKernels& k = active_kernels();
  const int64_t bc = ceil_div(cols, kQuantTile);
  const int64_t units = block_unit_count(rows, cols);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
  for (int64_t ui = 0; ui < units; ++ui) {
    const BlockUnit u = block_unit(ui, rows, bc);
    float s[kBlocksPerUnit];
    block_unit_scales(k, w, cols, u, s);  // before any write: out may equal w
    for (int64_t r = u.r0; r < u.r1; ++r) {
      for (int64_t j = u.j0; j < u.j1; ++j) {
        const int64_t c0 = j * kQuantTile, n = std::min(kQuantTile, cols - c0);
        k.fake_quantize(w + r * cols + c0, n, s[j - u.j0], out + r * cols + c0);
      }
    }
  }
}

void encode_e4m3(std::span<const float> x, std::span<uint8_t> q) {
  COHORT_CHECK(x.size() == q.size(), "encode_e4m3: size mismatch");
  const CpuKernels& k = active_kernels();
  constexpr int64_t kChunk = 4096;
  const int64_t n = static_cast<int64_t>(x.size());
  const int64_t chunks = ceil_div(n, kChunk);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    // Division by 1 is exact, so this is e4m3_from_float elementwise.
    k.quantize(x.data() + c * kChunk, std::min(kChunk, n - c * kChunk), 1.0f, q.data() + c * kChunk);
  }
}

void decode_e4m3(std::span<const uint8_t> q, std::span<float> x) {
  COHORT_CHECK(x.size() == q.size(), "decode_e4m3: size mismatch");
  const CpuKernels& k = active_kernels();
  constexpr int64_t kChunk = 4096;
  const int64_t n = static_cast<int64_t>(x.size());
  const int64_t chunks = ceil_div(n, kChunk);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    k.dequantize(q.data() + c * kChunk, std::min(kChunk, n - c * kChunk), 1.0f, x.data() + c * kChunk);
  }
}

void set_cpu_threads(int n) {
  COHORT_CHECK(n >= 1, "thread count must be positive");
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int cpu_threads() { return omp_get_max_threads(); }

CpuIsa active_cpu_isa() {
  return &active_kernels() == &detail::scalar_kernels() ? CpuIsa::scalar : CpuIsa::avx2;
}

bool cpu_isa_supported(CpuIsa isa) {
  if (isa == CpuIsa::scalar) return true;
  return detail::avx2_kernels() != nullptr && detail::cpu_has_avx2();
}

void set_cpu_isa(CpuIsa isa) {
  if (!cpu_isa_supported(isa)) {
    throw Error(std::string("CPU instruction set ") + cpu_isa_name(isa) +
                " is not available on this machine or in this build");
  }
  detail::active_slot().store(isa == CpuIsa::scalar ? &detail::scalar_kernels()
                                                     : detail::avx2_kernels());
}

const char* cpu_isa_name(CpuIsa isa) { return isa == CpuIsa::scalar ? "scalar" : "avx2"; }

}  // namespace cohort::kernels
