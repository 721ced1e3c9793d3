#include "grpo/checkpoint.h"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/check.h"
#include "common/file.h"
#include "grpo/safetensors.h"

namespace cohort::grpo {

namespace fs = std::filesystem;

namespace {

using nlohmann::json;
constexpr const char* kIndexName = "model.safetensors.index.json";

int64_t bytes_as(const at::Tensor& t, at::ScalarType dtype) {
  return t.numel() * (t.is_floating_point() ? c10::elementSize(dtype) : t.element_size());
}

bool is_shard_name(const std::string& f) {
  return f.rfind("model-", 0) == 0 && f.find("-of-") != std::string::npos &&
         f.size() > 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0;
}

// Tensors HF checkpoints may carry that are buffers, not parameters (recomputed here).
bool ignorable(const std::string& name) {
  constexpr std::string_view suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void copy_into(Model& model, const std::vector<NamedTensor>& tensors, const std::string& where,
               std::set<std::string>& seen) {
  at::NoGradGuard no_grad;
  for (const auto& [name, t] : tensors) {
    if (ignorable(name)) continue;
    at::Tensor* dst = model.find(name);
    if (dst == nullptr) {
      if (name == "lm_head.weight" && model.config().tie_word_embeddings) continue;
      throw Error(where + ": unexpected tensor '" + name + "' (not a parameter of this " +
                  model.config().model_type + " model)");
    }
    if (dst->sizes() != t.sizes())
      throw Error(where + ": tensor '" + name + "' has shape " + c10::str(t.sizes()) +
                  ", the model expects " + c10::str(dst->sizes()));
    if (!t.is_floating_point())
      throw Error(where + ": tensor '" + name + "' is not a floating-point tensor (dtype " +
                  c10::toString(t.scalar_type()) + ")");
    if (!seen.insert(name).second)
      throw Error(where + ": tensor '" + name + "' appears more than once");
    dst->copy_(t);
  }
}

void check_complete(const Model& model, const std::set<std::string>& seen, const std::string& where) {
  for (const auto& p : model.named_parameters())
    if (!seen.count(p.name)) throw Error(where + ": missing tensor '" + p.name + "'");
}

void load_sharded(Model& model, const fs::path& dir) {
  const std::string index_path = (dir / kIndexName).string();
  std::ifstream in(index_path);
  if (!in) throw Error("cannot open " + index_path);
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const json::exception& e) {
    throw Error(index_path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(index_path + ": no \"weight_map\" object");
  std::map<std::string, std::set<std::string>> by_shard;  // shard file → tensor names
  for (auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) throw Error(index_path + ": weight_map['" + name + "'] is not a file name");
    const std::string f = file.get<std::string>();
    // The index comes from whoever published the folder: never follow it out of the folder.
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
      throw Error(index_path + ": shard name '" + f + "' is not a plain file name");
    by_shard[f].insert(name);
  }
  if (by_shard.empty()) throw Error(index_path + ": weight_map is empty");
  std::set<std::string> seen;
  for (const auto& [file, names] : by_shard) {
    const fs::path shard = dir / file;
    if (!fs::exists(shard)) throw Error(index_path + ": shard '" + file + "' is missing");
    auto tensors = map_safetensors(shard.string());
    for (const auto& t : tensors)
      if (!names.count(t.name))
        throw Error(shard.string() + ": tensor '" + t.name + "' is not mapped to this shard by " + kIndexName);
    std::set<std::string> present;
    for (const auto& t : tensors) present.insert(t.name);
    for (const auto& n : names)
      if (!present.count(n))
        throw Error(index_path + ": maps '" + n + "' to '" + file + "', which does not contain it");
    copy_into(model, tensors, shard.string(), seen);
  }
  check_complete(model, seen, dir.string());
}

}  // namespace

void save_model(const std::string& dir, const Model& model, at::ScalarType dtype,
                int64_t max_shard_bytes) {
  fs::create_directories(dir);
  ModelConfig cfg = model.config();
  cfg.torch_dtype = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  const auto& params = model.named_parameters();
  int64_t total = 0;
  for (const auto& p : params) total += bytes_as(p.tensor, dtype);
  // Weights first, config last: a folder with a config.json always has matching weights.
  std::set<std::string> written;
  if (max_shard_bytes <= 0 || total <= max_shard_bytes) {
    std::vector<NamedTensor> tensors(params.begin(), params.end());
    write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, dtype,
                      {{"format", "pt"}});
    written.insert("model.safetensors");
  } else {
    std::vector<std::vector<NamedTensor>> shards(1);
    int64_t in_shard = 0;
    for (const auto& p : params) {
      const int64_t b = bytes_as(p.tensor, dtype);
      if (in_shard > 0 && in_shard + b > max_shard_bytes) {
        shards.emplace_back();
        in_shard = 0;
      }
      shards.back().push_back(p);
      in_shard += b;
    }
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", json::object()}};
    char name[64];
    for (size_t i = 0; i < shards.size(); ++i) {
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
      write_safetensors((fs::path(dir) / name).string(), shards[i], dtype, {{"format", "pt"}});
      for (const auto& p : shards[i]) index["weight_map"][p.name] = name;
      written.insert(name);
    }
    write_file_atomic((fs::path(dir) / kIndexName).string(), index.dump(2) + "\n");
    written.insert(kIndexName);
  }
  // Weights of an earlier save in the other layout would shadow or contradict these.
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string f = entry.path().filename().string();
    const bool ours = f == "model.safetensors" || f == kIndexName || is_shard_name(f);
    if (ours && !written.count(f)) fs::remove(entry.path());
  }
  write_file_atomic((fs::path(dir) / "config.json").string(), cfg.to_json());
}

void load_weights(Model& model, const std::string& path) {
  auto tensors = map_safetensors(path);
  std::set<std::string> seen;
  copy_into(model, tensors, path, seen);
  check_complete(model, seen, path);
}

void load_weights_from_folder(Model& model, const std::string& dir) {
  const fs::path d(dir);
  if (fs::exists(d / kIndexName)) return load_sharded(model, d);
  const fs::path weights = d / "model.safetensors";
  if (!fs::exists(weights))
    throw Error("'" + dir + "' has neither model.safetensors nor " + kIndexName);
  load_weights(model, weights.string());
}

std::unique_ptr<Model> load_model(const std::string& dir) {
  const fs::path cfg_path = fs::path(dir) / "config.json";
  if (!fs::exists(cfg_path))
    throw Error("no model at '" + dir + "' (expected config.json and model.safetensors)");
  ModelConfig cfg;
  try {
    cfg = ModelConfig::load(cfg_path.string());
  } catch (const Error& e) {
    throw Error(cfg_path.string() + ": " + e.what());
  }
  auto model = std::make_unique<Model>(cfg, /*seed=*/0);
  load_weights_from_folder(*model, dir);
  return model;
}

}  // namespace cohort::grpo
