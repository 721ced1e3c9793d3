// Fine-grained E4M3 quantization on the CPU, as in DeepSeek-V3: activations and output
// gradients per 1x128 tile (along the GEMM's reduction dimension K), weights per 128x128 block,
// one FP32 scale per tile/block computed from the tile's online amax:
//   scale = max(amax / 448, 2^-126),  q = e4m3(x / scale),  dequantized x^ = e4m3_to_float(q) * scale.
// Sizes need not be multiples of 128: the last tile/block of a row/matrix is ragged (its amax
// and scale cover only the elements that exist; nothing is padded).
//
//   std::vector<uint8_t> q(rows * cols);
//   std::vector<float> s(tile128_scale_count(rows, cols));
//   quantize_e4m3_tile128(x, rows, cols, q.data(), s.data());
//   dequantize_e4m3_tile128(q.data(), s.data(), rows, cols, x_hat);
//
// Every matrix is row-major and dense. Scale layouts are the ones cuBLASLt expects for
// CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F / _BLK128x128_32F (see tile128_scale_index and
// block128_scale_index), so CPU and CUDA paths share buffers and tests. Bound per element
// (a property of the format, tested): |x - x^| <= max(2^-4 |x|, 2^-10 scale) + float rounding
// of the scale division and multiplication. A tile holding a NaN or inf dequantizes to all NaN
// (the error stays visible to the outlier detector; nothing is silently clamped).
// The scale rule is e4m3_scale_from_amax in fp8.h. Work is split over OpenMP threads.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/fp8.h"

namespace cohort::kernels {

inline constexpr int64_t kQuantTile = 128;

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// --- 1x128 tiles (activations, output gradients) -------------------------------------------
// Tile t of row r covers columns [128 t, min(128 t + 128, cols)). Its scale lives at
// t * rows + r ("outer-dimension major", cuBLASLt's VEC128_32F layout).
constexpr int64_t tile128_count_per_row(int64_t cols) { return ceil_div(cols, kQuantTile); }
constexpr int64_t tile128_scale_count(int64_t rows, int64_t cols) {
  return rows * tile128_count_per_row(cols);
}
constexpr int64_t tile128_scale_index(int64_t row, int64_t tile, int64_t rows) {
  return tile * rows + row;
}

void quantize_e4m3_tile128(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scales);
void dequantize_e4m3_tile128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                             float* x);

// --- 128x128 blocks (weights) ----------------------------------------------------------------
// Block (i, j) covers rows [128 i, ...) x cols [128 j, ...). Its scale lives at
// i * block128_scale_ld(cols) + j, where the leading dimension is rounded up to a multiple of 4
// (16 bytes), as cuBLASLt's BLK128x128_32F requires; the padding entries are written as 1.
constexpr int64_t block128_scale_ld(int64_t cols) { return round_up(ceil_div(cols, kQuantTile), 4); }
constexpr int64_t block128_scale_count(int64_t rows, int64_t cols) {
  return ceil_div(rows, kQuantTile) * block128_scale_ld(cols);
}
constexpr int64_t block128_scale_index(int64_t block_row, int64_t block_col, int64_t cols) {
  return block_row * block128_scale_ld(cols) + block_col;
}

void quantize_e4m3_block128(const float* w, int64_t rows, int64_t cols, uint8_t* q, float* scales);
void dequantize_e4m3_block128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                              float* w);

// --- Fake quantization (quantize then dequantize, no FP8 buffer) -----------------------------
// Bit-identical to quantize_* followed by dequantize_*; what the CPU FP8 emulation (and
// FP8Linear's CPU path) runs. `out` may equal `x` (in place).
//   tile128      : 1x128 tiles along each row (forward X, backward dY for dX = dY W).
//   tile128_cols : 128x1 tiles along each column, i.e. 1x128 tiles of the transpose, for the
//                  weight-gradient GEMM dW = dY^T X whose reduction runs over the rows.
//   block128     : 128x128 blocks (W; the same quantized W serves W and W^T).
void fake_quantize_e4m3_tile128(const float* x, int64_t rows, int64_t cols, float* out);
void fake_quantize_e4m3_tile128_cols(const float* x, int64_t rows, int64_t cols, float* out);
void fake_quantize_e4m3_block128(const float* w, int64_t rows, int64_t cols, float* out);

// --- Bulk conversions (no scaling) -------------------------------------------------------------
void encode_e4m3(std::span<const float> x, std::span<uint8_t> q);   // sizes must match
void decode_e4m3(std::span<const uint8_t> q, std::span<float> x);   // sizes must match

// --- CPU execution -------------------------------------------------------------------------------
// Threads for the kernels' parallel loops (OpenMP) and for the FP32 GEMM (OpenBLAS), as set by
// the process's runtime set-up; benchmarks set it explicitly.
void set_cpu_threads(int n);
int cpu_threads();

// --- CPU instruction set -------------------------------------------------------------------------
// The hot loops have an AVX2 version picked at run time when the CPU has it; both produce
// identical bits (tested). Tests and benchmarks may force one.
enum class CpuIsa { scalar, avx2 };
CpuIsa active_cpu_isa();
bool cpu_isa_supported(CpuIsa isa);
void set_cpu_isa(CpuIsa isa);  // throws cohort::Error when the CPU lacks it
const char* cpu_isa_name(CpuIsa isa);

}  // namespace cohort::kernels
