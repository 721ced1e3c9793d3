// The transformer: KV-cached generation reproduces the full forward, padding is invisible,
// and parameter names follow Hugging Face.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "common/check.h"
#include "grpo/model.h"

namespace cohort::grpo {
namespace {

ModelConfig small_config(const std::string& type = "llama") {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 32;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  return c;
}

// Perturb norms and biases too, so the test exercises every parameter.
void randomize(Model& m, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard g;
  for (auto& p : m.named_parameters()) p.tensor.add_(torch::randn_like(p.tensor) * 0.1);
}

TEST(Model, HuggingFaceParameterNames) {
  Model m(small_config("qwen2"), 1);
  const auto& p = m.named_parameters();
  EXPECT_EQ(p.front().name, "model.embed_tokens.weight");
  EXPECT_NE(m.find("model.layers.1.self_attn.q_proj.bias"), nullptr);
  EXPECT_NE(m.find("model.layers.0.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(m.find("lm_head.weight"), nullptr);  // tied
  int64_t count = 0;
  for (const auto& x : p) count += x.tensor.numel();
  EXPECT_EQ(count, m.config().parameter_count());
}

TEST(Model, KvCacheMatchesFullForward) {
  for (const char* type : {"llama", "qwen2"}) {
    Model m(small_config(type), 2);
    randomize(m, 3);
    torch::InferenceMode guard;
    const int64_t n = 3, t = 12;
    auto tokens = torch::randint(0, 32, {n, t}, torch::kLong);
    auto pos = torch::arange(t, torch::kLong).repeat({n, 1});
    auto valid = torch::ones({n, t}, torch::kBool);
    auto full = m.forward(tokens, pos, valid);

    KVCache cache = m.make_cache(n, t);
    auto pre = m.forward_cached(tokens.narrow(1, 0, 5), pos.narrow(1, 0, 5),
                                valid.narrow(1, 0, 5), cache, /*all_positions=*/true);
    EXPECT_TRUE(torch::allclose(pre, full.narrow(1, 0, 5), 1e-4, 1e-5)) << type;
    for (int64_t s = 5; s < t; ++s) {
      auto step = m.forward_cached(tokens.narrow(1, s, 1), pos.narrow(1, s, 1),
                                   valid.narrow(1, s, 1), cache);
      EXPECT_TRUE(torch::allclose(step, full.select(1, s), 1e-4, 1e-5)) << type << " step " << s;
    }
  }
}

TEST(Model, LeftPaddingIsInvisible) {
  Model m(small_config(), 4);
  randomize(m, 5);
  torch::InferenceMode guard;
  auto seq = torch::randint(3, 32, {1, 6}, torch::kLong);
  auto plain = m.forward(seq, torch::arange(6, torch::kLong).unsqueeze(0),
                         torch::ones({1, 6}, torch::kBool));
  // The same sequence after three pad tokens, positions restarting at the first real token.
  auto padded = torch::cat({torch::zeros({1, 3}, torch::kLong), seq}, 1);
  auto pos = torch::cat({torch::zeros({1, 3}, torch::kLong), torch::arange(6, torch::kLong).unsqueeze(0)}, 1);
  auto valid = torch::cat({torch::zeros({1, 3}, torch::kBool), torch::ones({1, 6}, torch::kBool)}, 1);
  auto out = m.forward(padded, pos, valid);
  EXPECT_FALSE(out.isnan().any().item<bool>());
  EXPECT_TRUE(torch::allclose(out.narrow(1, 3, 6), plain, 1e-4, 1e-5));
}

TEST(Model, GqaEqualsExplicitlyRepeatedHeads) {
  // A GQA model equals the MHA model whose K/V projections repeat each KV head g times.
  ModelConfig gqa = small_config();
  ModelConfig mha = gqa;
  mha.num_key_value_heads = mha.num_attention_heads;
  Model a(gqa, 6), b(mha, 6);
  randomize(a, 7);
  {
    torch::NoGradGuard g;
    for (const auto& p : a.named_parameters()) {
      auto* dst = b.find(p.name);
      if (p.name.find("k_proj") != std::string::npos || p.name.find("v_proj") != std::string::npos) {
        const int64_t hd = gqa.dim_head(), groups = gqa.num_attention_heads / gqa.num_key_value_heads;
        auto w = p.tensor.view({gqa.num_key_value_heads, hd, -1}).repeat_interleave(groups, 0);
        dst->copy_(w.reshape(dst->sizes()));
      } else {
        dst->copy_(p.tensor);
      }
    }
  }
  torch::InferenceMode guard;
  auto tokens = torch::randint(0, 32, {2, 9}, torch::kLong);
  auto pos = torch::arange(9, torch::kLong).repeat({2, 1});
  auto valid = torch::ones({2, 9}, torch::kBool);
  EXPECT_TRUE(torch::allclose(a.forward(tokens, pos, valid), b.forward(tokens, pos, valid), 1e-4, 1e-5));
}

TEST(Model, RejectsInvalidConfig) {
  ModelConfig c = small_config();
  c.num_key_value_heads = 3;
  EXPECT_THROW(Model(c, 1), Error);
  c = small_config();
  c.model_type = "gpt2";
  EXPECT_THROW(Model(c, 1), Error);
}

}  // namespace
}  // namespace cohort::grpo
