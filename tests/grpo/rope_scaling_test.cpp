// RoPE scaling and the config.json fields of the real models: the llama3 and linear
// `rope_scaling` against values worked out by hand from transformers' formulas, the config.json
// files of Llama-3.2-1B(-Instruct), Qwen2.5-0.5B-Instruct and SmolLM2-360M-Instruct (their
// published fields, written here) read with every field that changes the computation honoured,
// unsupported scalings refused by name, and the scaled frequencies reaching the model's forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "grpo/checkpoint.h"
#include "grpo/config.h"
#include "grpo/model.h"
#include "tests/support/error_of.h"

namespace cohort::grpo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// meta-llama/Llama-3.2-1B config.json as published (the Instruct variant differs only in
// eos_token_id: [128001, 128008, 128009]).
json llama32_1b() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})");
}

json qwen25_05b_instruct() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
    "vocab_size": 151936})");
}

json smollm2_360m_instruct() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 960,
    "initializer_range": 0.02, "intermediate_size": 2560, "is_llama_config": true,
    "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 15,
    "num_hidden_layers": 32, "num_key_value_heads": 5, "pad_token_id": 2, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
    "use_cache": true, "vocab_size": 49152})");
}

using test::error_of;

ModelConfig small_rope(double theta, const RopeScaling& r) {
  ModelConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 8;  // four rotated pairs
  c.rope_theta = theta;
  c.rope_scaling = r;
  return c;
}

// head_dim 8, θ = 10⁴: inverse frequencies 1, 0.1, 0.01, 0.001, wavelengths 2π·(1, 10, 100, 1000).
// With original context 1024, low factor 1 and high factor 4 the thresholds are 1024 (low) and
// 256 (high): pairs 0 and 1 are high frequency (kept), pair 3 is low frequency (÷ factor) and
// pair 2 (wavelength 628.3) is blended with smooth = (1024/628.3185 − 1)/3 = 0.2099155.
TEST(RopeScaling, Llama3MatchesHandComputedValues) {
  const RopeScaling r{.type = "llama3", .factor = 8.0, .low_freq_factor = 1.0,
                      .high_freq_factor = 4.0, .original_max_position_embeddings = 1024};
  const auto f = small_rope(10000.0, r).rope_inv_freq();
  ASSERT_EQ(f.size(), 4u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_NEAR(f[1], 0.1, 1e-15);
  // 0.01 · (0.2099155 + (1 − 0.2099155)/8) = 0.01 · 0.3086761
  EXPECT_NEAR(f[2], 0.003086761, 1e-9);
  EXPECT_NEAR(f[3], 0.001 / 8, 1e-15);

  // Without scaling the same config gives the plain θ^(-2i/d).
  const auto plain = small_rope(10000.0, {}).rope_inv_freq();
  EXPECT_DOUBLE_EQ(plain[0], 1.0);
  EXPECT_NEAR(plain[1], 0.1, 1e-15);
  EXPECT_NEAR(plain[2], 0.01, 1e-15);
  EXPECT_NEAR(plain[3], 0.001, 1e-15);

  // Linear: every frequency ÷ factor.
  const auto lin = small_rope(10000.0, {.type = "linear", .factor = 4.0}).rope_inv_freq();
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(lin[i], plain[i] / 4, 1e-15) << i;
}

// Llama 3.2's own numbers (θ = 5·10⁵, d = 64, factor 32, original context 8192): the three
// regimes by wavelength, each entry checked against the formula written out here.
TEST(RopeScaling, Llama32ConfigReadsAndScalesEachRegime) {
  const ModelConfig c = ModelConfig::from_json(llama32_1b().dump());
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  const auto f = c.rope_inv_freq();
  ASSERT_EQ(f.size(), 32u);
  int high = 0, low = 0, mid = 0;
  for (int i = 0; i < 32; ++i) {
    const double base = std::pow(500000.0, -2.0 * i / 64.0);
    const double wavelen = 2 * 3.14159265358979323846 / base;
    if (wavelen < 8192.0 / 4) {
      EXPECT_NEAR(f[i], base, 1e-15 * base) << i;
      ++high;
    } else if (wavelen > 8192.0) {
      EXPECT_NEAR(f[i], base / 32, 1e-15 * base) << i;
      ++low;
    } else {
      const double s = (8192.0 / wavelen - 1.0) / 3.0;
      EXPECT_GE(s, 0.0);
      EXPECT_LE(s, 1.0);
      EXPECT_NEAR(f[i], (1 - s) * base / 32 + s * base, 1e-12 * base) << i;
      ++mid;
    }
  }
  // 2π·θ^(2i/64) = 2π·e^(0.41008·i) crosses 2048 between i = 14 and 15 (ln(2048/2π) = 5.787)
  // and 8192 between i = 17 and 18 (ln(8192/2π) = 7.173).
  EXPECT_EQ(high, 15);
  EXPECT_EQ(mid, 3);
  EXPECT_EQ(low, 14);
}

TEST(RopeScaling, RealConfigsHonourEveryField) {
  const ModelConfig l = ModelConfig::from_json(llama32_1b().dump());
  EXPECT_EQ(l.model_type, "llama");
  EXPECT_EQ(l.hidden_size, 2048);
  EXPECT_EQ(l.dim_head(), 64);
  EXPECT_EQ(l.num_key_value_heads, 8);
  EXPECT_EQ(l.rope_theta, 500000.0);
  EXPECT_EQ(l.rms_norm_eps, 1e-5);
  EXPECT_TRUE(l.tie_word_embeddings);
  EXPECT_FALSE(l.qkv_bias());
  EXPECT_FALSE(l.o_bias());
  EXPECT_EQ(l.bos_token_id, 128000);
  EXPECT_EQ(l.eos_token_id, 128001);
  EXPECT_EQ(l.all_eos_token_ids(), std::vector<int64_t>({128001}));
  EXPECT_EQ(l.max_position_embeddings, 131072);
  // 1.236 B parameters (tied head): the published size.
  EXPECT_EQ(l.parameter_count(), 1235814400);

  json instruct = llama32_1b();
  instruct["eos_token_id"] = {128001, 128008, 128009};
  const ModelConfig li = ModelConfig::from_json(instruct.dump());
  EXPECT_EQ(li.eos_token_id, 128001);
  EXPECT_EQ(li.all_eos_token_ids(), std::vector<int64_t>({128001, 128008, 128009}));

  const ModelConfig q = ModelConfig::from_json(qwen25_05b_instruct().dump());
  EXPECT_EQ(q.model_type, "qwen2");
  EXPECT_TRUE(q.qkv_bias());  // Qwen2 always has q/k/v biases
  EXPECT_FALSE(q.o_bias());
  EXPECT_EQ(q.dim_head(), 64);
  EXPECT_EQ(q.rope_theta, 1e6);
  EXPECT_TRUE(q.rope_scaling.type.empty());
  EXPECT_TRUE(q.tie_word_embeddings);
  EXPECT_EQ(q.bos_token_id, 151643);
  EXPECT_EQ(q.eos_token_id, 151645);
  EXPECT_EQ(q.parameter_count(), 494032768);  // Qwen2.5-0.5B: 0.49 B

  const ModelConfig s = ModelConfig::from_json(smollm2_360m_instruct().dump());
  EXPECT_EQ(s.dim_head(), 64);  // 960 / 15, no head_dim key
  EXPECT_EQ(s.num_key_value_heads, 5);
  EXPECT_EQ(s.rope_theta, 100000.0);  // an integer in the file
  EXPECT_TRUE(s.rope_scaling.type.empty());
  EXPECT_EQ(s.pad_token_id, 2);
  EXPECT_EQ(s.eos_token_id, 2);
  EXPECT_EQ(s.parameter_count(), 361821120);  // SmolLM2-360M

  // Written back and read again, nothing is lost (rope_scaling, the EOS list, head_dim).
  for (const ModelConfig& c : {l, li, q, s}) {
    const ModelConfig back = ModelConfig::from_json(c.to_json());
    EXPECT_EQ(back.rope_scaling.type, c.rope_scaling.type);
    EXPECT_EQ(back.rope_scaling.factor, c.rope_scaling.factor);
    EXPECT_EQ(back.rope_scaling.original_max_position_embeddings,
              c.rope_scaling.original_max_position_embeddings);
    EXPECT_EQ(back.all_eos_token_ids(), c.all_eos_token_ids());
    EXPECT_EQ(back.rope_inv_freq(), c.rope_inv_freq());
    EXPECT_EQ(back.parameter_count(), c.parameter_count());
  }
  const json written = json::parse(li.to_json());
  EXPECT_EQ(written["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(written["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(written["eos_token_id"], json({128001, 128008, 128009}));
  EXPECT_TRUE(json::parse(q.to_json())["rope_scaling"].is_null());
}

TEST(RopeScaling, UnsupportedTypesAreRefusedByName) {
  for (const std::string type : {"yarn", "dynamic", "longrope"}) {
    json c = llama32_1b();
    c["rope_scaling"] = {{"rope_type", type}, {"factor", 4.0}};
    EXPECT_NE(error_of([&] { ModelConfig::from_json(c.dump()); }).find("rope_scaling type '" + type + "'"),
              std::string::npos)
        << type;
  }
  // The older key "type" is read as transformers does; "default" means no scaling.
  json c = llama32_1b();
  c["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(ModelConfig::from_json(c.dump()).rope_scaling.type, "linear");
  c["rope_scaling"] = {{"type", "default"}};
  EXPECT_TRUE(ModelConfig::from_json(c.dump()).rope_scaling.type.empty());
  c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}};  // incomplete
  EXPECT_NE(error_of([&] { ModelConfig::from_json(c.dump()); }).find("low_freq_factor"), std::string::npos);
  c = llama32_1b();
  c["mlp_bias"] = true;
  EXPECT_NE(error_of([&] { ModelConfig::from_json(c.dump()); }).find("mlp_bias"), std::string::npos);
}

at::Tensor logits_at(const Model& m, const at::Tensor& positions) {
  at::NoGradGuard g;
  auto tokens = at::tensor({3, 9, 27, 5, 30, 1, 2, 14}, at::kLong).view({1, 8});
  return m.forward(tokens, positions.view({1, 8}), at::ones({1, 8}, at::kBool));
}

// The model uses the scaled frequencies: with every frequency divided by 2, positions 0, 2, 4, …
// see exactly the angles the unscaled model sees at 0, 1, 2, … (products by 2 are exact in
// float). A llama3 scaling whose thresholds put every pair in the low-frequency regime is the
// same division, and the scaling survives a checkpoint round trip.
TEST(RopeScaling, ModelForwardUsesScaledFrequencies) {
  ModelConfig base;
  base.vocab_size = 32;
  base.hidden_size = 32;
  base.intermediate_size = 48;
  base.num_hidden_layers = 2;
  base.num_attention_heads = 4;
  base.num_key_value_heads = 2;
  Model plain(base, 3);
  const auto even = at::arange(0, 16, 2, at::kLong), unit = at::arange(0, 8, at::kLong);
  const at::Tensor want = logits_at(plain, unit);

  ModelConfig lin = base;
  lin.rope_scaling = {.type = "linear", .factor = 2.0};
  Model ml(lin, 3);
  EXPECT_TRUE(at::allclose(logits_at(ml, even), want, 1e-5, 1e-6));
  EXPECT_FALSE(at::allclose(logits_at(ml, unit), want, 1e-5, 1e-6));  // scaling changes outputs

  ModelConfig l3 = base;
  l3.rope_scaling = {.type = "llama3", .factor = 2.0, .low_freq_factor = 1.0,
                     .high_freq_factor = 4.0, .original_max_position_embeddings = 4};
  Model m3(l3, 3);  // every wavelength ≥ 2π > 4: all pairs are low frequency
  EXPECT_TRUE(at::allclose(logits_at(m3, even), want, 1e-5, 1e-6));

  const fs::path dir = fs::temp_directory_path() / ("cohort_rope_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  save_model(dir.string(), m3);
  auto back = load_model(dir.string());
  EXPECT_EQ(back->config().rope_scaling.type, "llama3");
  EXPECT_TRUE(at::equal(logits_at(*back, unit), logits_at(m3, unit)));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace cohort::grpo
