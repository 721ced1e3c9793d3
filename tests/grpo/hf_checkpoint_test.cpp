// Hugging Face model folders: tiny random models of each family (Qwen2 with QKV bias and tied
// embeddings, Llama with an untied head and attention bias) written from C++, single-file and
// sharded, in F32/BF16/F16, loaded back (memory-mapped) with logits equal to the in-memory model
// holding the same values; and every corruption of the folder refused with a clear error.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "grpo/checkpoint.h"
#include "grpo/safetensors.h"
#include "tests/support/error_of.h"

namespace cohort::grpo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;

ModelConfig family(const std::string& type) {
  ModelConfig c;
  c.model_type = type;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = type == "qwen2";
  c.attention_bias = type == "llama";  // llama: q/k/v and o biases
  c.rope_theta = type == "qwen2" ? 1000000.0 : 500000.0;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

at::Tensor logits(const Model& m) {
  at::NoGradGuard g;
  auto tokens = at::tensor({3, 9, 27, 5, 60, 1, 2, 44, 10, 11, 12, 13, 14, 15}, at::kLong).view({2, 7});
  auto positions = at::arange(7, at::kLong).repeat({2, 1});
  auto valid = at::ones({2, 7}, at::kBool);
  return m.forward(tokens, positions, valid);
}

// A model holding m's values rounded to dtype: what a checkpoint in that dtype must load as.
std::unique_ptr<Model> rounded(const Model& m, at::ScalarType dtype) {
  auto r = std::make_unique<Model>(m.config(), 0);
  at::NoGradGuard g;
  for (const auto& p : m.named_parameters()) r->find(p.name)->copy_(p.tensor.to(dtype).to(at::kFloat));
  return r;
}

class HfCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cohort_hf_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  json read_json(const fs::path& p) {
    std::ifstream in(p);
    return json::parse(in);
  }
  void write_json(const fs::path& p, const json& j) { std::ofstream(p, std::ios::trunc) << j.dump(2); }

  fs::path dir_;
};

TEST_F(HfCheckpoint, EachFamilyEachDtypeLoadsWithIdenticalLogits) {
  for (const std::string type : {"qwen2", "llama"}) {
    Model m(family(type), 11);
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
      const fs::path d = dir_ / (type + c10::toString(dtype));
      save_model(d.string(), m, dtype);
      const json cfg = read_json(d / "config.json");
      EXPECT_EQ(cfg["architectures"][0], type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM");
      auto back = load_model(d.string());
      EXPECT_EQ(back->config().model_type, type);
      EXPECT_EQ(back->config().tie_word_embeddings, type == "qwen2");
      auto want = logits(*rounded(m, dtype));
      EXPECT_TRUE(at::equal(logits(*back), want)) << type << " " << c10::toString(dtype);
    }
  }
}

TEST_F(HfCheckpoint, ShardedIndexRoundTrip) {
  Model m(family("llama"), 5);
  const int64_t total = m.config().parameter_count() * 2;  // BF16 bytes
  save_model(dir_.string(), m, at::kBFloat16, /*max_shard_bytes=*/total / 3);
  const json index = read_json(dir_ / "model.safetensors.index.json");
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  std::set<std::string> shards;
  for (auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
  EXPECT_EQ(index["weight_map"].size(), m.named_parameters().size());
  ASSERT_GE(shards.size(), 3u);
  const std::string last = "model-0000" + std::to_string(shards.size()) + "-of-0000" +
                           std::to_string(shards.size()) + ".safetensors";
  EXPECT_TRUE(shards.count("model-00001-of-0000" + std::to_string(shards.size()) + ".safetensors"));
  EXPECT_TRUE(shards.count(last));
  for (const auto& s : shards) EXPECT_TRUE(fs::exists(dir_ / s)) << s;
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors"));
  EXPECT_TRUE(at::equal(logits(*load_model(dir_.string())), logits(*rounded(m, at::kBFloat16))));

  // Saving unsharded over it leaves exactly one set of weights.
  save_model(dir_.string(), m, at::kFloat);
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors.index.json"));
  for (const auto& s : shards) EXPECT_FALSE(fs::exists(dir_ / s)) << s;
  EXPECT_TRUE(at::equal(logits(*load_model(dir_.string())), logits(m)));
}

TEST_F(HfCheckpoint, MappedTensorsEqualCopiedOnes) {
  Model m(family("qwen2"), 2);
  save_model(dir_.string(), m, at::kHalf);
  const std::string f = (dir_ / "model.safetensors").string();
  auto copied = read_safetensors(f);
  auto mapped = map_safetensors(f);
  ASSERT_EQ(copied.size(), mapped.size());
  for (size_t i = 0; i < copied.size(); ++i) {
    EXPECT_EQ(copied[i].name, mapped[i].name);
    EXPECT_TRUE(at::equal(copied[i].tensor, mapped[i].tensor)) << copied[i].name;
  }
  fs::remove(f);  // the mapping outlives the directory entry
  EXPECT_TRUE(at::equal(copied[0].tensor, mapped[0].tensor.clone()));
}

TEST_F(HfCheckpoint, IgnoresRotaryBuffersOfOlderCheckpoints) {
  Model m(family("llama"), 4);
  std::vector<NamedTensor> ts(m.named_parameters().begin(), m.named_parameters().end());
  ts.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", at::ones({4})});
  write_safetensors((dir_ / "model.safetensors").string(), ts);
  std::ofstream(dir_ / "config.json") << m.config().to_json();
  EXPECT_TRUE(at::equal(logits(*load_model(dir_.string())), logits(m)));
}

TEST_F(HfCheckpoint, ShardCorruptionsAreRefused) {
  Model m(family("qwen2"), 9);
  const int64_t total = m.config().parameter_count() * 4;
  auto fresh = [&] {
    fs::remove_all(dir_);
    save_model(dir_.string(), m, at::kFloat, total / 2);
    return read_json(dir_ / "model.safetensors.index.json");
  };
  const fs::path index_path = dir_ / "model.safetensors.index.json";
  auto load = [&] { load_model(dir_.string()); };

  json idx = fresh();
  const std::string first = idx["weight_map"]["model.embed_tokens.weight"];
  fs::remove(dir_ / first);
  EXPECT_NE(error_of(load).find("shard '" + first + "' is missing"), std::string::npos);

  idx = fresh();
  idx["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
  write_json(index_path, idx);
  EXPECT_NE(error_of(load).find("not a plain file name"), std::string::npos);

  idx = fresh();  // the index names a tensor its shard lacks
  idx["weight_map"]["model.extra.weight"] = first;
  write_json(index_path, idx);
  EXPECT_NE(error_of(load).find("model.extra.weight"), std::string::npos);

  idx = fresh();  // a shard holds a tensor the index maps elsewhere
  std::string other;
  for (auto& [n, f] : idx["weight_map"].items())
    if (f != first) other = f;
  ASSERT_FALSE(other.empty());
  idx["weight_map"]["model.embed_tokens.weight"] = other;
  write_json(index_path, idx);
  EXPECT_NE(error_of(load).find("model.embed_tokens.weight"), std::string::npos);

  idx = fresh();  // a parameter missing from the index and the shards
  {
    auto ts = read_safetensors((dir_ / first).string());
    ts.erase(std::remove_if(ts.begin(), ts.end(),
                            [](auto& t) { return t.name == "model.embed_tokens.weight"; }),
             ts.end());
    write_safetensors((dir_ / first).string(), ts);
    idx["weight_map"].erase("model.embed_tokens.weight");
    write_json(index_path, idx);
  }
  EXPECT_NE(error_of(load).find("missing tensor 'model.embed_tokens.weight'"), std::string::npos);

  fresh();
  std::ofstream(index_path, std::ios::trunc) << "{not json";
  EXPECT_NE(error_of(load).find("not valid JSON"), std::string::npos);

  idx = fresh();  // a truncated shard
  {
    const fs::path p = dir_ / first;
    fs::resize_file(p, fs::file_size(p) - 10);
  }
  EXPECT_NE(error_of(load).find("truncated"), std::string::npos);
}

TEST_F(HfCheckpoint, TensorAndConfigMismatchesAreRefused) {
  Model m(family("llama"), 1);
  const fs::path f = dir_ / "model.safetensors";
  auto load = [&] { load_model(dir_.string()); };
  auto params = [&] { return std::vector<NamedTensor>(m.named_parameters().begin(), m.named_parameters().end()); };
  std::ofstream(dir_ / "config.json") << m.config().to_json();

  auto ts = params();
  ts.push_back({"model.layers.9.mlp.up_proj.weight", at::zeros({2, 2})});
  write_safetensors(f.string(), ts);
  EXPECT_NE(error_of(load).find("unexpected tensor 'model.layers.9.mlp.up_proj.weight'"), std::string::npos);

  ts = params();
  ts[3].tensor = at::zeros({5, 5});
  write_safetensors(f.string(), ts);
  EXPECT_NE(error_of(load).find("has shape"), std::string::npos);

  ts = params();
  ts[1].tensor = at::zeros(ts[1].tensor.sizes(), at::kInt);
  write_safetensors(f.string(), ts);
  EXPECT_NE(error_of(load).find("not a floating-point tensor"), std::string::npos);

  // An FP8 checkpoint: a dtype the reader does not know.
  {
    write_safetensors(f.string(), params());
    std::ifstream in(f, std::ios::binary);
    std::string b{std::istreambuf_iterator<char>(in), {}};
    const size_t at = b.find("\"F32\"");
    ASSERT_NE(at, std::string::npos);
    b.replace(at, 5, "\"F8E\"");
    std::ofstream(f, std::ios::binary | std::ios::trunc) << b;
  }
  EXPECT_NE(error_of(load).find("unsupported dtype"), std::string::npos);

  write_safetensors(f.string(), params());
  json cfg = json::parse(m.config().to_json());
  cfg["model_type"] = "mistral";
  write_json(dir_ / "config.json", cfg);
  EXPECT_NE(error_of(load).find("unsupported model_type 'mistral'"), std::string::npos);

  cfg = json::parse(m.config().to_json());
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}};
  write_json(dir_ / "config.json", cfg);
  EXPECT_NE(error_of(load).find("rope_scaling"), std::string::npos);

  cfg = json::parse(m.config().to_json());
  cfg["hidden_size"] = 48;  // weights no longer fit the declared shape
  cfg["head_dim"] = 8;
  write_json(dir_ / "config.json", cfg);
  EXPECT_NE(error_of(load).find("has shape"), std::string::npos);

  fs::remove(f);
  write_json(dir_ / "config.json", json::parse(m.config().to_json()));
  EXPECT_NE(error_of(load).find("neither model.safetensors nor"), std::string::npos);
}

}  // namespace
}  // namespace cohort::grpo
