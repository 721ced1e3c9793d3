// CPU kernels of the one-token decode step (FP32, no autograd): RMSNorm in one pass, RoPE fused
// with the KV-cache write and the attention over the cache, SiLU·up. Internal to grpo/: the model
// calls them from forward_cached(); raw row-major buffers, ATen's intra-op threads, AVX2 + FMA
// inner loops chosen at run time (scalar otherwise).
#pragma once

#include <cstdint>

namespace cohort::grpo::decode_cpu {

// out[r] = x[r] · rsqrt(mean(x[r]²) + eps) · w for `rows` rows of d floats (out may equal x).
void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t d, float* out);

// out[r, i] = silu(gate_up[r, i]) · gate_up[r, inter + i]
void silu_mul(const float* gate_up, int64_t rows, int64_t inter, float* out);

struct AttentionShape {
  int64_t rows = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t max_len = 0;  // cache capacity (positions)
  int64_t start = 0;    // this step's position in the cache; keys 0..start are attended
  float scale = 1.0f;   // applied to the rotated query
};

// One query position per row:
//   qkv      [rows, (heads + 2·kv_heads)·head_dim]: this step's Q|K|V projections
//   cos, sin [rows, head_dim]: RoPE tables at each row's position (halves repeated)
//   key_bias [rows, max_len]: 0 for a valid key, -inf for padding; key `start` (the query's own)
//            is always attended
//   k_cache, v_cache [rows, kv_heads, max_len, head_dim]: get the rotated K and V at `start`
//   out      [rows, heads·head_dim]
void attention(const AttentionShape& s, const float* qkv, const float* cos, const float* sin,
               const float* key_bias, float* k_cache, float* v_cache, float* out);

// Whether the AVX2 + FMA loops run (false: the scalar ones).
bool uses_avx2();

}  // namespace cohort::grpo::decode_cpu
