#include "grpo/config.h"

#include <cmath>
#include <fstream>
#include <numbers>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"

namespace cohort::grpo {

using nlohmann::json;

int64_t ModelConfig::parameter_count() const {
  const int64_t d = hidden_size, hd = dim_head();
  const int64_t q = num_attention_heads * hd, kv = num_key_value_heads * hd;
  int64_t attn = d * q + 2 * d * kv + q * d;
  if (qkv_bias()) attn += q + 2 * kv;
  if (o_bias()) attn += d;
  const int64_t mlp = 3 * d * intermediate_size;
  const int64_t layer = attn + mlp + 2 * d;
  const int64_t embed = vocab_size * d * (tie_word_embeddings ? 1 : 2);
  return num_hidden_layers * layer + embed + d;
}

std::vector<double> ModelConfig::rope_inv_freq() const {
  const int64_t d = dim_head();
  std::vector<double> inv(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i)
    inv[i] = 1.0 / std::pow(rope_theta, static_cast<double>(2 * i) / static_cast<double>(d));
  const RopeScaling& r = rope_scaling;
  if (r.type == "linear") {
    for (double& f : inv) f /= r.factor;
  } else if (r.type == "llama3") {
    // transformers' _compute_llama3_parameters, term for term.
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_freq_wavelen = old_len / r.low_freq_factor;
    const double high_freq_wavelen = old_len / r.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f = f / r.factor;
      } else if (!(wavelen < high_freq_wavelen)) {
        const double smooth =
            (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        f = (1 - smooth) * f / r.factor + smooth * f;
      }
    }
  }
  return inv;
}

std::vector<int64_t> ModelConfig::all_eos_token_ids() const {
  if (!eos_token_ids.empty()) return eos_token_ids;
  if (eos_token_id >= 0) return {eos_token_id};
  return {};
}

void ModelConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("invalid model config: " + m); };
  if (model_type != "llama" && model_type != "qwen2")
    fail("unsupported model_type '" + model_type + "' (supported: llama, qwen2)");
  if (vocab_size <= 0 || hidden_size <= 0 || intermediate_size <= 0 || num_hidden_layers <= 0)
    fail("sizes must be positive");
  if (num_attention_heads <= 0 || num_key_value_heads <= 0)
    fail("head counts must be positive");
  if (num_attention_heads % num_key_value_heads != 0)
    fail("num_attention_heads must be a multiple of num_key_value_heads");
  if (head_dim == 0 && hidden_size % num_attention_heads != 0)
    fail("hidden_size must be divisible by num_attention_heads");
  if (dim_head() % 2 != 0) fail("head_dim must be even for RoPE");
  if (max_position_embeddings <= 0) fail("max_position_embeddings must be positive");
  if (rope_theta <= 0) fail("rope_theta must be positive");
  const RopeScaling& r = rope_scaling;
  if (!r.type.empty() && r.type != "linear" && r.type != "llama3")
    fail("rope_scaling type '" + r.type + "' is not supported (supported: default, linear, llama3)");
  if (!r.type.empty() && !(r.factor > 0)) fail("rope_scaling.factor must be positive");
  if (r.type == "llama3") {
    if (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor))
      fail("rope_scaling needs 0 < low_freq_factor < high_freq_factor");
    if (r.original_max_position_embeddings <= 0)
      fail("rope_scaling.original_max_position_embeddings must be positive");
  }
  if (!eos_token_ids.empty() && eos_token_ids.front() != eos_token_id)
    fail("eos_token_id must be the first of eos_token_ids");
}

std::string ModelConfig::to_json() const {
  json j;
  j["architectures"] = {model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = dim_head();
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  if (rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    json r = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      r["low_freq_factor"] = rope_scaling.low_freq_factor;
      r["high_freq_factor"] = rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["hidden_act"] = "silu";
  if (model_type == "llama") j["attention_bias"] = attention_bias;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() > 1) j["eos_token_id"] = eos_token_ids;
  else if (eos_token_id >= 0) j["eos_token_id"] = eos_token_id;
  if (pad_token_id >= 0) j["pad_token_id"] = pad_token_id;
  j["torch_dtype"] = torch_dtype;
  if (!tokenizer.empty()) j["cohort_tokenizer"] = tokenizer;
  return j.dump(2) + "\n";
}

ModelConfig ModelConfig::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(std::string("config.json is not valid JSON: ") + e.what());
  }
  ModelConfig c;
  try {
    c.model_type = j.value("model_type", c.model_type);
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.hidden_size = j.at("hidden_size").get<int64_t>();
    c.intermediate_size = j.at("intermediate_size").get<int64_t>();
    c.num_hidden_layers = j.at("num_hidden_layers").get<int64_t>();
    c.num_attention_heads = j.at("num_attention_heads").get<int64_t>();
    c.num_key_value_heads = j.value("num_key_value_heads", c.num_attention_heads);
    if (j.contains("head_dim") && !j["head_dim"].is_null()) c.head_dim = j["head_dim"].get<int64_t>();
    c.max_position_embeddings = j.value("max_position_embeddings", c.max_position_embeddings);
    c.rms_norm_eps = j.value("rms_norm_eps", c.rms_norm_eps);
    c.rope_theta = j.value("rope_theta", c.rope_theta);
    c.tie_word_embeddings = j.value("tie_word_embeddings", false);
    c.attention_bias = j.value("attention_bias", false);
    // eos_token_id may be a list in newer configs (Llama 3.2 Instruct: end_of_text, eom, eot);
    // the first entry is the primary one and every entry ends a completion.
    auto token = [&](const char* key) -> int64_t {
      if (!j.contains(key) || j[key].is_null()) return -1;
      if (j[key].is_array()) return j[key].empty() ? -1 : j[key][0].get<int64_t>();
      return j[key].get<int64_t>();
    };
    c.bos_token_id = token("bos_token_id");
    c.eos_token_id = token("eos_token_id");
    c.pad_token_id = token("pad_token_id");
    if (j.contains("eos_token_id") && j["eos_token_id"].is_array())
      c.eos_token_ids = j["eos_token_id"].get<std::vector<int64_t>>();
    c.torch_dtype = j.value("torch_dtype", c.torch_dtype);
    c.tokenizer = j.value("cohort_tokenizer", std::string());
    if (j.contains("hidden_act") && j["hidden_act"] != "silu")
      throw Error("unsupported hidden_act '" + j["hidden_act"].get<std::string>() + "' (only silu)");
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      const json& r = j["rope_scaling"];
      if (!r.is_object()) throw Error("config.json: rope_scaling must be an object or null");
      // transformers reads "rope_type" and falls back to the older key "type".
      std::string type = r.contains("rope_type") ? r["rope_type"].get<std::string>()
                                                 : r.value("type", std::string("default"));
      if (type != "default" && type != "linear" && type != "llama3")
        throw Error("config.json: rope_scaling type '" + type +
                    "' is not supported (supported: default, linear, llama3)");
      if (type != "default") {
        c.rope_scaling.type = type;
        if (!r.contains("factor")) throw Error("config.json: rope_scaling '" + type + "' needs factor");
        c.rope_scaling.factor = r["factor"].get<double>();
      }
      if (type == "llama3") {
        for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
          if (!r.contains(k)) throw Error(std::string("config.json: rope_scaling 'llama3' needs ") + k);
        c.rope_scaling.low_freq_factor = r["low_freq_factor"].get<double>();
        c.rope_scaling.high_freq_factor = r["high_freq_factor"].get<double>();
        c.rope_scaling.original_max_position_embeddings =
            r["original_max_position_embeddings"].get<int64_t>();
      }
    }
    if (j.value("mlp_bias", false)) throw Error("mlp_bias (biases in the MLP) is not supported");
    if (j.value("rope_interleaved", false))
      throw Error("rope_interleaved (GPT-J-style rotary pairs) is not supported");
    if (j.value("use_sliding_window", false))
      throw Error("use_sliding_window (sliding-window attention) is not supported");
  } catch (const json::exception& e) {
    throw Error(std::string("config.json: missing or mistyped field: ") + e.what());
  }
  c.validate();
  return c;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str());
}

}  // namespace cohort::grpo
