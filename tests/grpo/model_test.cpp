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

// The fused one-token decode step (CPU, FP32, no autograd) against the general tensor-op path on
// the same inputs: logits and cache contents step by step, with padding scattered through prompt
// and steps. They differ only in summation order, so 1e-5 relative + 1e-5 absolute.
TEST(Model, FastDecodeMatchesGeneralPath) {
  struct Case {
    const char* type;
    int64_t hidden, heads, kv_heads;
  };
  // head_dim 16 runs the AVX2 attention loops where the CPU has them, head_dim 12 the scalar
  // ones; qwen2 adds the QKV bias; 4 heads on 1 KV head is GQA with g = 4.
  for (Case k : {Case{"llama", 64, 4, 2}, Case{"qwen2", 64, 4, 2}, Case{"llama", 48, 4, 1}}) {
    ModelConfig cfg = small_config(k.type);
    cfg.hidden_size = k.hidden;
    cfg.num_attention_heads = k.heads;
    cfg.num_key_value_heads = k.kv_heads;
    Model m(cfg, 8);
    randomize(m, 9);
    torch::InferenceMode guard;
    const int64_t n = 5, p = 6, steps = 24, len = p + steps;
    auto tokens = torch::randint(0, 32, {n, len}, torch::kLong);
    auto pos = torch::arange(len, torch::kLong).repeat({n, 1});
    auto valid = torch::rand({n, len}) > 0.25;
    KVCache fast = m.make_cache(n, len), general = m.make_cache(n, len);
    ASSERT_TRUE(m.takes_fast_decode(tokens.narrow(1, 0, 1), fast));
    // Prefill (t > 1) takes the general path in both.
    m.forward_cached(tokens.narrow(1, 0, p), pos.narrow(1, 0, p), valid.narrow(1, 0, p), fast);
    m.forward_cached(tokens.narrow(1, 0, p), pos.narrow(1, 0, p), valid.narrow(1, 0, p), general);
    for (int64_t s = p; s < len; ++s) {
      auto tok = tokens.narrow(1, s, 1), ps = pos.narrow(1, s, 1), ok = valid.narrow(1, s, 1);
      m.set_fast_decode(true);
      auto a = m.forward_cached(tok, ps, ok, fast);
      m.set_fast_decode(false);
      auto b = m.forward_cached(tok, ps, ok, general);
      ASSERT_EQ(a.sizes(), b.sizes());
      EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5))
          << k.type << " hidden " << k.hidden << " step " << s << ": max |diff| "
          << (a - b).abs().max().item<float>();
    }
    m.set_fast_decode(true);
    EXPECT_EQ(fast.length, general.length);
    EXPECT_TRUE(torch::equal(fast.key_bias, general.key_bias));
    for (size_t l = 0; l < fast.k.size(); ++l) {
      EXPECT_TRUE(torch::allclose(fast.k[l], general.k[l], 1e-5, 1e-5)) << k.type << " layer " << l;
      EXPECT_TRUE(torch::allclose(fast.v[l], general.v[l], 1e-5, 1e-5)) << k.type << " layer " << l;
    }
    // all_positions keeps the [N, T, V] shape of the general path.
    KVCache one = m.make_cache(n, 2);
    m.forward_cached(tokens.narrow(1, 0, 1), pos.narrow(1, 0, 1), valid.narrow(1, 0, 1), one);
    EXPECT_EQ(m.forward_cached(tokens.narrow(1, 1, 1), pos.narrow(1, 1, 1), valid.narrow(1, 1, 1),
                               one, /*all_positions=*/true)
                  .sizes(),
              (std::vector<int64_t>{n, 1, 32}));
  }
}

TEST(Model, FastDecodeOnlyWithoutAutogradInFp32) {
  Model m(small_config(), 10);
  KVCache cache = m.make_cache(2, 4);
  auto tok = torch::zeros({2, 1}, torch::kLong);
  EXPECT_FALSE(m.takes_fast_decode(tok, cache));  // grad mode on
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(m.takes_fast_decode(tok, cache));
  m.set_precision(Precision::bf16);
  EXPECT_FALSE(m.takes_fast_decode(tok, cache));
  m.set_precision(Precision::fp32);
  m.set_fast_decode(false);
  EXPECT_FALSE(m.takes_fast_decode(tok, cache));
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
