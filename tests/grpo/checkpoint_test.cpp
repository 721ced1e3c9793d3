// Checkpoints: safetensors round trips in F32/BF16/F16, byte layout per the format, and
// rejection of every kind of corrupt or mismatched file with a clear error.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "grpo/checkpoint.h"
#include "grpo/safetensors.h"

namespace cohort::grpo {
namespace {

namespace fs = std::filesystem;

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cohort_ckpt_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  ModelConfig config() {
    ModelConfig c;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    return c;
  }
  std::string bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void put(const fs::path& p, const std::string& b) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << b;
  }
  std::string expect_error(const std::string& path) {
    try {
      read_safetensors(path);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for " << path;
    return "";
  }
  fs::path dir_;
};

TEST_F(Checkpoint, RoundTripEveryDtype) {
  Model m(config(), 3);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const std::string d = (dir_ / c10::toString(dtype)).string();
    save_model(d, m, dtype);
    auto back = load_model(d);
    for (const auto& p : m.named_parameters()) {
      auto expect = p.tensor.detach().to(dtype).to(at::kFloat);
      EXPECT_TRUE(torch::equal(*back->find(p.name), expect)) << p.name << " " << c10::toString(dtype);
    }
  }
}

TEST_F(Checkpoint, FileLayoutFollowsTheFormat) {
  std::vector<NamedTensor> ts{{"a", torch::arange(6, torch::kFloat).view({2, 3})},
                              {"b", torch::tensor({1.5f})}};
  const auto path = (dir_ / "t.safetensors").string();
  write_safetensors(path, ts);
  const std::string b = bytes(path);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t(uint8_t(b[i])) << (8 * i);
  EXPECT_EQ(hlen % 8, 0u);
  auto header = nlohmann::json::parse(b.substr(8, hlen));
  EXPECT_EQ(header["a"]["dtype"], "F32");
  EXPECT_EQ(header["a"]["shape"], nlohmann::json({2, 3}));
  EXPECT_EQ(header["a"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json({24, 28}));
  EXPECT_EQ(b.size(), 8 + hlen + 28);
  float v;
  std::memcpy(&v, b.data() + 8 + hlen + 24, 4);
  EXPECT_EQ(v, 1.5f);
}

TEST_F(Checkpoint, RejectsCorruptFiles) {
  std::vector<NamedTensor> ts{{"w", torch::ones({4, 4})}};
  const auto good = (dir_ / "good.safetensors").string();
  write_safetensors(good, ts);
  const std::string b = bytes(good);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t(uint8_t(b[i])) << (8 * i);
  const auto bad = (dir_ / "bad.safetensors").string();

  put(bad, b.substr(0, 5));
  EXPECT_NE(expect_error(bad).find("truncated"), std::string::npos);
  put(bad, b.substr(0, b.size() - 4));
  EXPECT_NE(expect_error(bad).find("outside the file"), std::string::npos);
  std::string huge = b;
  huge[7] = 0x7f;
  put(bad, huge);
  EXPECT_NE(expect_error(bad).find("header length"), std::string::npos);
  std::string garbage = b;
  garbage[8] = '!';
  put(bad, garbage);
  EXPECT_NE(expect_error(bad).find("JSON"), std::string::npos);

  auto rewrite = [&](const std::string& header_json, size_t data_bytes) {
    std::string h = header_json;
    h.append((8 - h.size() % 8) % 8, ' ');
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = char((h.size() >> (8 * i)) & 0xff);
    put(bad, out + h + std::string(data_bytes, '\0'));
  };
  rewrite(R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,60]}})", 60);
  EXPECT_NE(expect_error(bad).find("shape × dtype"), std::string::npos);
  rewrite(R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(expect_error(bad).find("dtype"), std::string::npos);
  rewrite(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"v":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", 12);
  EXPECT_NE(expect_error(bad).find("holes"), std::string::npos);
  rewrite(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(expect_error(bad).find("negative"), std::string::npos);
  rewrite(R"({"w":{"dtype":"F32","shape":[1]}})", 4);
  EXPECT_NE(expect_error(bad).find("lacks"), std::string::npos);
}

TEST_F(Checkpoint, LoadRejectsMismatchedModels) {
  Model m(config(), 1);
  save_model(dir_.string(), m);
  ModelConfig other = config();
  other.intermediate_size = 64;
  Model wrong_shape(other, 1);
  try {
    load_weights(wrong_shape, (dir_ / "model.safetensors").string());
    FAIL() << "shape mismatch accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has shape"), std::string::npos) << e.what();
  }
  // Missing tensor.
  std::vector<NamedTensor> partial(m.named_parameters().begin(), m.named_parameters().end() - 1);
  write_safetensors((dir_ / "model.safetensors").string(), partial);
  EXPECT_THROW(load_model(dir_.string()), Error);
  // Unexpected tensor.
  auto extra = m.named_parameters();
  extra.push_back({"model.layers.9.mlp.up_proj.weight", torch::ones({2})});
  write_safetensors((dir_ / "model.safetensors").string(), extra);
  EXPECT_THROW(load_model(dir_.string()), Error);
  EXPECT_THROW(load_model((dir_ / "nowhere").string()), Error);
}

TEST_F(Checkpoint, ConfigJsonUsesHuggingFaceFields) {
  ModelConfig c = config();
  c.model_type = "qwen2";
  auto j = nlohmann::json::parse(c.to_json());
  EXPECT_EQ(j["architectures"][0], "Qwen2ForCausalLM");
  EXPECT_EQ(j["num_key_value_heads"], 2);
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.model_type, "qwen2");
  EXPECT_TRUE(back.qkv_bias());
  EXPECT_THROW(ModelConfig::from_json(R"({"model_type":"llama"})"), Error);
  EXPECT_THROW(ModelConfig::from_json(R"({"model_type":"mamba","vocab_size":1,"hidden_size":1,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1})"), Error);
}

}  // namespace
}  // namespace cohort::grpo
