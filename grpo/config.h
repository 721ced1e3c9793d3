// Model hyper-parameters, named and serialized exactly as Hugging Face's `config.json` for the
// Llama / Qwen2 families, so checkpoints written here open in other tools and vice versa.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cohort::grpo {

// `rope_scaling` of config.json, as Hugging Face transformers computes it
// (modeling_rope_utils.py): "linear" divides every inverse frequency by `factor` (positions / factor);
// "llama3" (Llama 3.1/3.2) divides the low frequencies by `factor`, keeps the high ones and blends
// between them. Other types (yarn, dynamic, longrope, ...) are refused when the config is read.
struct RopeScaling {
  std::string type;  // "" (none, or "default"), "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;                    // llama3
  double high_freq_factor = 4.0;                   // llama3
  int64_t original_max_position_embeddings = 8192; // llama3
};

struct ModelConfig {
  std::string model_type = "llama";  // "llama" | "qwen2"
  int64_t vocab_size = 32;
  int64_t hidden_size = 128;
  int64_t intermediate_size = 384;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 256;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = true;
  bool attention_bias = false;  // q/k/v (and o for llama) biases; Qwen2 always has q/k/v bias
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;           // the first of eos_token_ids
  std::vector<int64_t> eos_token_ids;  // every EOS id when config.json lists several (Llama 3.2 Instruct)
  int64_t pad_token_id = -1;
  std::string torch_dtype = "float32";
  std::string tokenizer;  // built-in tokenizer name (e.g. "chars:arith"); empty for HF models

  int64_t dim_head() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  bool qkv_bias() const { return model_type == "qwen2" || attention_bias; }
  bool o_bias() const { return model_type == "llama" && attention_bias; }
  int64_t parameter_count() const;
  // RoPE inverse frequencies, one per rotated pair (dim_head() / 2): θ^(-2i/d), then rope_scaling.
  std::vector<double> rope_inv_freq() const;
  // eos_token_ids, or {eos_token_id} when only that is set.
  std::vector<int64_t> all_eos_token_ids() const;

  // Throws cohort::Error with the offending field when the shape cannot be built.
  void validate() const;

  std::string to_json() const;
  static ModelConfig from_json(const std::string& text);  // throws cohort::Error
  static ModelConfig load(const std::string& path);       // reads a config.json
};

}  // namespace cohort::grpo
