// CUDA E4M3 quantize/dequantize kernels (1x128 tiles, 128x128 blocks) and the device self-check.
// Per-element math is fp8.h's (the same functions the CPU runs); layouts are quantize.h's.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda_check.h"
#include "kernels/fp8.h"
#include "kernels/fp8_cuda.h"
#include "kernels/quantize.h"

namespace cohort::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kLanesPerTile = 8;  // 8 threads x 16 elements = one 1x128 tile
constexpr int kChunk = 16;        // elements per thread: 4 float4 loads, one 16-byte code store

__device__ __forceinline__ uint32_t abs_bits(float v) { return __float_as_uint(v) & 0x7FFFFFFFu; }

// Valid elements of a thread's chunk starting at column c0: 0..16.
__device__ __forceinline__ int64_t chunk_len(int64_t cols, int64_t c0) {
  return cols - c0 < 0 ? 0 : (cols - c0 > kChunk ? kChunk : cols - c0);
}

// Loads up to 16 floats at src (n valid); 16-byte loads when the chunk is whole and aligned.
template <bool kVec>
__device__ __forceinline__ void load_chunk(const float* __restrict__ src, int64_t n, float v[kChunk]) {
  if (kVec && n == kChunk) {
    const float4* p = reinterpret_cast<const float4*>(src);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 f = __ldg(p + i);
      v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) v[i] = i < n ? src[i] : 0.0f;
  }
}

template <bool kVec>
__device__ __forceinline__ void store_codes(uint8_t* __restrict__ dst, int64_t n, const float v[kChunk],
                                            float scale) {
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    w[i / 4] |= uint32_t{e4m3_from_float(v[i] / scale)} << (8 * (i % 4));
  }
  if (kVec && n == kChunk) {
    *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i)
      if (i < n) dst[i] = static_cast<uint8_t>(w[i / 4] >> (8 * (i % 4)));
  }
}

template <bool kVec>
__device__ __forceinline__ void load_codes(const uint8_t* __restrict__ src, int64_t n, uint8_t c[kChunk]) {
  if (kVec && n == kChunk) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(src));
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < kChunk; ++i) c[i] = static_cast<uint8_t>(w[i / 4] >> (8 * (i % 4)));
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) c[i] = i < n ? src[i] : 0;
  }
}

template <bool kVec>
__device__ __forceinline__ void store_dequantized(float* __restrict__ dst, int64_t n,
                                                  const uint8_t c[kChunk], float scale) {
  float v[kChunk];
#pragma unroll
  for (int i = 0; i < kChunk; ++i) v[i] = e4m3_to_float(c[i]) * scale;
  if (kVec && n == kChunk) {
    float4* p = reinterpret_cast<float4*>(dst);
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
  } else {
#pragma unroll
    for (int i = 0; i < kChunk; ++i)
      if (i < n) dst[i] = v[i];
  }
}

// One 1x128 tile per 8 consecutive threads; the amax is reduced over those 8 lanes.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
quantize_tile128_kernel(const float* __restrict__ x, int64_t rows, int64_t cols, int64_t tpr,
                        uint8_t* __restrict__ q, float* __restrict__ scales) {
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t tile = gid / kLanesPerTile;
  const int lane = threadIdx.x % kLanesPerTile;
  const bool active = tile < rows * tpr;
  const int64_t r = active ? tile / tpr : 0, t = active ? tile % tpr : 0;
  const int64_t c0 = t * kQuantTile + lane * kChunk;
  const int64_t n = active ? chunk_len(cols, c0) : 0;  // 0: this lane is past a ragged row end
  float v[kChunk];
  load_chunk<kVec>(x + r * cols + c0, n, v);
  uint32_t amax = 0;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) amax = max(amax, abs_bits(v[i]));
#pragma unroll
  for (int off = kLanesPerTile / 2; off > 0; off /= 2) {
    amax = max(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
  }
  if (!active) return;
  const float scale = e4m3_scale_from_amax(__uint_as_float(amax));
  if (lane == 0) scales[tile128_scale_index(r, t, rows)] = scale;
  if (n != 0) store_codes<kVec>(q + r * cols + c0, n, v, scale);
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
dequantize_tile128_kernel(const uint8_t* __restrict__ q, const float* __restrict__ scales,
                          int64_t rows, int64_t cols, int64_t tpr, float* __restrict__ x) {
  const int64_t gid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t tile = gid / kLanesPerTile;
  if (tile >= rows * tpr) return;
  const int lane = threadIdx.x % kLanesPerTile;
  const int64_t r = tile / tpr, t = tile % tpr;
  const int64_t c0 = t * kQuantTile + lane * kChunk;
  const int64_t n = chunk_len(cols, c0);
  if (n == 0) return;
  uint8_t c[kChunk];
  load_codes<kVec>(q + r * cols + c0, n, c);
  store_dequantized<kVec>(x + r * cols + c0, n, c, __ldg(scales + tile128_scale_index(r, t, rows)));
}

// One 128x128 block per thread block: thread (row group g = tid / 8, column chunk k = tid % 8)
// holds rows g, g + 32, g + 64, g + 96 of columns [16 k, 16 k + 16) in registers across the
// block-wide amax reduction, so the block is read once.
constexpr int kBlockRowsPerThread = kQuantTile / (kThreads / kLanesPerTile);  // 4

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
quantize_block128_kernel(const float* __restrict__ w, int64_t rows, int64_t cols,
                         uint8_t* __restrict__ q, float* __restrict__ scales) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  const int g = threadIdx.x / kLanesPerTile, k = threadIdx.x % kLanesPerTile;
  const int64_t c0 = bj * kQuantTile + k * kChunk;
  const int64_t n = chunk_len(cols, c0);
  float v[kBlockRowsPerThread][kChunk];
  uint32_t amax = 0;
#pragma unroll
  for (int i = 0; i < kBlockRowsPerThread; ++i) {
    const int64_t r = bi * kQuantTile + g + 32 * i;
    load_chunk<kVec>(w + r * cols + c0, r < rows ? n : 0, v[i]);
#pragma unroll
    for (int e = 0; e < kChunk; ++e) amax = max(amax, abs_bits(v[i][e]));
  }
  for (int off = 16; off > 0; off /= 2) amax = max(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, off));
  __shared__ uint32_t warp_amax[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = 0;
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) amax = max(amax, warp_amax[i]);
  const float scale = e4m3_scale_from_amax(__uint_as_float(amax));
  if (threadIdx.x == 0) {
    const int64_t ld = block128_scale_ld(cols);
    scales[bi * ld + bj] = scale;
    if (bj == gridDim.x - 1) {
      for (int64_t j = bj + 1; j < ld; ++j) scales[bi * ld + j] = 1.0f;
    }
  }
  if (n == 0) return;
#pragma unroll
  for (int i = 0; i < kBlockRowsPerThread; ++i) {
    const int64_t r = bi * kQuantTile + g + 32 * i;
    if (r < rows) store_codes<kVec>(q + r * cols + c0, n, v[i], scale);
  }
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads)
dequantize_block128_kernel(const uint8_t* __restrict__ q, const float* __restrict__ scales,
                           int64_t rows, int64_t cols, float* __restrict__ w) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  const int g = threadIdx.x / kLanesPerTile, k = threadIdx.x % kLanesPerTile;
  const int64_t c0 = bj * kQuantTile + k * kChunk;
  const int64_t n = chunk_len(cols, c0);
  if (n == 0) return;
  const float scale = __ldg(scales + block128_scale_index(bi, bj, cols));
#pragma unroll
  for (int i = 0; i < kBlockRowsPerThread; ++i) {
    const int64_t r = bi * kQuantTile + g + 32 * i;
    if (r >= rows) break;
    uint8_t c[kChunk];
    load_codes<kVec>(q + r * cols + c0, n, c);
    store_dequantized<kVec>(w + r * cols + c0, n, c, scale);
  }
}

__global__ void count_mismatch_kernel(uint64_t begin, uint64_t count,
                                      unsigned long long* __restrict__ mismatches) {
  unsigned long long bad = 0;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const float x = __uint_as_float(static_cast<uint32_t>(begin + i));
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned short hw;
    asm("{cvt.rn.satfinite.e4m3x2.f32 %0, %2, %1;}\n" : "=h"(hw) : "f"(x), "f"(0.0f));
    bad += static_cast<uint8_t>(hw & 0xFFu) != e4m3_from_float(x);
#else
    bad += 1;  // no FP8 conversion instruction below sm_89: nothing to compare against
#endif
  }
  for (int off = 16; off > 0; off /= 2) bad += __shfl_xor_sync(0xFFFFFFFFu, bad, off);
  if (threadIdx.x % 32 == 0 && bad != 0) atomicAdd(mismatches, bad);
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

void check_shape(int64_t rows, int64_t cols, const char* what) {
  if (rows < 0 || cols < 0) throw Error(std::string(what) + ": negative shape");
  if (ceil_div(rows, kQuantTile) > 65535) {
    throw Error(std::string(what) + ": more than 65535 x 128 rows (grid limit)");
  }
}

// 16-byte accesses need whole 16-element chunks at 16-byte-aligned addresses in every row.
bool vectorizable(int64_t cols, const void* a, const void* b) {
  return cols % kChunk == 0 && detail::aligned16(a) && detail::aligned16(b);
}

unsigned tile_grid(int64_t rows, int64_t cols) {
  const int64_t threads = rows * tile128_count_per_row(cols) * kLanesPerTile;
  return static_cast<unsigned>(ceil_div(threads, kThreads));
}

}  // namespace

namespace cuda {

void quantize_e4m3_tile128(const float* x, int64_t rows, int64_t cols, uint8_t* q, float* scales,
                           void* stream) {
  check_shape(rows, cols, "cuda::quantize_e4m3_tile128");
  if (rows == 0 || cols == 0) return;
  const int64_t tpr = tile128_count_per_row(cols);
  if (vectorizable(cols, x, q)) {
    quantize_tile128_kernel<true><<<tile_grid(rows, cols), kThreads, 0, as_stream(stream)>>>(
        x, rows, cols, tpr, q, scales);
  } else {
    quantize_tile128_kernel<false><<<tile_grid(rows, cols), kThreads, 0, as_stream(stream)>>>(
        x, rows, cols, tpr, q, scales);
  }
  detail::check_cuda(cudaGetLastError(), "cuda::quantize_e4m3_tile128 launch");
}

void dequantize_e4m3_tile128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                             float* x, void* stream) {
  check_shape(rows, cols, "cuda::dequantize_e4m3_tile128");
  if (rows == 0 || cols == 0) return;
  const int64_t tpr = tile128_count_per_row(cols);
  if (vectorizable(cols, x, q)) {
    dequantize_tile128_kernel<true><<<tile_grid(rows, cols), kThreads, 0, as_stream(stream)>>>(
        q, scales, rows, cols, tpr, x);
  } else {
    dequantize_tile128_kernel<false><<<tile_grid(rows, cols), kThreads, 0, as_stream(stream)>>>(
        q, scales, rows, cols, tpr, x);
  }
  detail::check_cuda(cudaGetLastError(), "cuda::dequantize_e4m3_tile128 launch");
}

void quantize_e4m3_block128(const float* w, int64_t rows, int64_t cols, uint8_t* q, float* scales,
                            void* stream) {
  check_shape(rows, cols, "cuda::quantize_e4m3_block128");
  if (rows == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kQuantTile)),
                  static_cast<unsigned>(ceil_div(rows, kQuantTile)));
  if (vectorizable(cols, w, q)) {
    quantize_block128_kernel<true><<<grid, kThreads, 0, as_stream(stream)>>>(w, rows, cols, q, scales);
  } else {
    quantize_block128_kernel<false><<<grid, kThreads, 0, as_stream(stream)>>>(w, rows, cols, q, scales);
  }
  detail::check_cuda(cudaGetLastError(), "cuda::quantize_e4m3_block128 launch");
}

void dequantize_e4m3_block128(const uint8_t* q, const float* scales, int64_t rows, int64_t cols,
                              float* w, void* stream) {
  check_shape(rows, cols, "cuda::dequantize_e4m3_block128");
  if (rows == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, kQuantTile)),
                  static_cast<unsigned>(ceil_div(rows, kQuantTile)));
  if (vectorizable(cols, w, q)) {
    dequantize_block128_kernel<true><<<grid, kThreads, 0, as_stream(stream)>>>(q, scales, rows, cols, w);
  } else {
    dequantize_block128_kernel<false><<<grid, kThreads, 0, as_stream(stream)>>>(q, scales, rows, cols, w);
  }
  detail::check_cuda(cudaGetLastError(), "cuda::dequantize_e4m3_block128 launch");
}

uint64_t count_e4m3_mismatches_vs_hardware(uint64_t begin, uint64_t count) {
  unsigned long long* d = nullptr;
  detail::check_cuda(cudaMalloc(&d, sizeof(*d)), "cudaMalloc");
  unsigned long long h = 0;
  try {
    detail::check_cuda(cudaMemset(d, 0, sizeof(*d)), "cudaMemset");
    count_mismatch_kernel<<<1024, kThreads>>>(begin, count, d);
    detail::check_cuda(cudaGetLastError(), "count_mismatch_kernel launch");
    detail::check_cuda(cudaMemcpy(&h, d, sizeof(h), cudaMemcpyDeviceToHost), "cudaMemcpy");
  } catch (...) {
    cudaFree(d);
    throw;
  }
  cudaFree(d);
  return h;
}

}  // namespace cuda
}  // namespace cohort::kernels
