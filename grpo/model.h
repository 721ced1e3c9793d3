// The decoder-only transformer of the Llama / Qwen2 family (RMSNorm, RoPE, SwiGLU, GQA,
// optional QKV bias, tied embeddings) with Hugging Face parameter names, a full-sequence
// forward for training and a KV-cached forward for generation.
//
//   Model m(config, /*seed=*/1);
//   at::Tensor logits = m.forward(tokens, positions, key_valid);        // [N, T, V]
//   KVCache cache = m.make_cache(N, max_len);
//   logits = m.forward_cached(step_tokens, step_positions, step_valid, cache);
#pragma once

#include <ATen/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "grpo/config.h"

namespace cohort::grpo {

// How linear layers compute. Embeddings, norms, attention and the output head always stay in
// FP32 (DeepSeek-V3's split); only the projections in the blocks change.
enum class Precision { fp32, bf16, fp8 };
Precision parse_precision(const std::string& s);  // throws cohort::Error
const char* precision_name(Precision p);

// Where a model computes: "cpu", "cuda" (the current GPU) or "cuda:N". Throws cohort::Error
// that says what is missing: a CPU-only LibTorch, no visible GPU, or N out of range.
at::Device parse_device(const std::string& s);

// Linear layer implementation for the block projections: y = x·wᵀ + b (b may be undefined).
using LinearFn = at::Tensor (*)(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

// Weights of one block with the projections that share an input concatenated, so that
// generation runs one GEMM for Q|K|V and one for gate|up instead of five.
struct FusedBlockWeights {
  at::Tensor qkv_w, qkv_b, gate_up_w;
};

// Keys and values of every layer for N sequences, preallocated to max_len positions, plus a
// snapshot of the fused weights taken when the cache was made (generation never sees a
// half-updated policy).
struct KVCache {
  std::vector<FusedBlockWeights> fused;
  std::vector<at::Tensor> k, v;  // per layer: [N, kv_heads, max_len, head_dim]
  at::Tensor key_bias;           // [N, 1, 1, max_len]: 0 for valid keys, -inf for padding
  int64_t length = 0;            // positions filled so far
  int64_t max_len = 0;
};

class Model {
 public:
  // Random initialization (normal, std 0.02, as Hugging Face), reproducible from the seed.
  Model(ModelConfig config, uint64_t seed);

  const ModelConfig& config() const { return config_; }
  // Parameters in Hugging Face order and naming; tensors are the live (trainable) storage.
  const std::vector<NamedTensor>& named_parameters() const { return params_; }
  std::vector<at::Tensor> parameters() const;
  at::Tensor* find(const std::string& name);

  void set_precision(Precision p) { precision_ = p; }
  Precision precision() const { return precision_; }

  // Moves every parameter (in place: handles held elsewhere, an optimizer's included, follow)
  // and the model's constant tables to `device`. Initialization always runs on the CPU, so a
  // seed gives the same weights on every device. Every tensor the model creates lives there.
  void to(at::Device device);
  at::Device device() const { return embed_.device(); }

  // One-token steps of forward_cached() on the CPU in FP32 without autograd run fused kernels
  // (grpo/decode_cpu.h). Off: every step takes the general tensor-op path (tests compare them).
  void set_fast_decode(bool on) { fast_decode_ = on; }
  // Whether a one-token step on these tokens and this cache takes the fused kernels now.
  bool takes_fast_decode(const at::Tensor& tokens, const KVCache& cache) const;

  // Full forward. tokens, positions: [N, T] int64; key_valid: [N, T] bool (false = padding).
  // Attention is causal and never attends to padding keys. Returns logits [N, T, V] on the
  // model's device; inputs on another device are copied to it.
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& positions,
                     const at::Tensor& key_valid) const;
  // Hidden states after the final norm, [N, T, hidden]; forward() = lm_head(hidden).
  at::Tensor hidden(const at::Tensor& tokens, const at::Tensor& positions,
                    const at::Tensor& key_valid) const;
  at::Tensor lm_head(const at::Tensor& hidden) const;

  KVCache make_cache(int64_t n, int64_t max_len) const;
  // Appends T new positions to the cache and returns their logits: [N, T, V] when
  // all_positions, else only the last position's [N, V] (what generation needs).
  at::Tensor forward_cached(const at::Tensor& tokens, const at::Tensor& positions,
                            const at::Tensor& key_valid, KVCache& cache,
                            bool all_positions = false) const;

  // Copies values (not storage) from another model of identical config.
  void copy_from(const Model& other);

 private:
  struct Layer {
    at::Tensor input_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, post_norm, gate_w, up_w, down_w;
  };
  at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) const;
  at::Tensor block(const Layer& layer, const FusedBlockWeights& fused, const at::Tensor& x,
                   const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& bias,
                   KVCache* cache, size_t layer_index) const;
  FusedBlockWeights fuse(const Layer& layer) const;
  std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions) const;
  at::Tensor decode_step(const at::Tensor& tokens, const at::Tensor& positions,
                         const at::Tensor& key_valid, KVCache& cache) const;
  at::Tensor add(const std::string& name, std::vector<int64_t> shape, bool is_norm);

  ModelConfig config_;
  Precision precision_ = Precision::fp32;
  bool fast_decode_ = true;
  std::vector<NamedTensor> params_;
  at::Tensor embed_, final_norm_, head_;  // head_ aliases embed_ when tied
  std::vector<Layer> layers_;
  at::Tensor inv_freq_;
};

}  // namespace cohort::grpo
