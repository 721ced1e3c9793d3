#include "grpo/checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "common/check.h"
#include "grpo/safetensors.h"

namespace cohort::grpo {

namespace fs = std::filesystem;

void save_model(const std::string& dir, const Model& model, at::ScalarType dtype) {
  fs::create_directories(dir);
  ModelConfig cfg = model.config();
  cfg.torch_dtype = dtype == at::kBFloat16 ? "bfloat16" : dtype == at::kHalf ? "float16" : "float32";
  // Weights first, config last: a folder with a config.json always has matching weights.
  std::vector<NamedTensor> tensors;
  for (const auto& p : model.named_parameters()) tensors.push_back(p);
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, dtype,
                    {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / "config.json").string(), cfg.to_json());
}

void load_weights(Model& model, const std::string& path) {
  auto tensors = read_safetensors(path);
  std::set<std::string> seen;
  at::NoGradGuard no_grad;
  for (auto& [name, t] : tensors) {
    at::Tensor* dst = model.find(name);
    if (dst == nullptr) {
      if (name == "lm_head.weight" && model.config().tie_word_embeddings) continue;
      throw Error(path + ": unexpected tensor '" + name + "' (not a parameter of this " +
                  model.config().model_type + " model)");
    }
    if (dst->sizes() != t.sizes())
      throw Error(path + ": tensor '" + name + "' has shape " + c10::str(t.sizes()) +
                  ", the model expects " + c10::str(dst->sizes()));
    if (!t.is_floating_point())
      throw Error(path + ": tensor '" + name + "' is not a floating-point tensor");
    dst->copy_(t);
    seen.insert(name);
  }
  for (const auto& p : model.named_parameters())
    if (!seen.count(p.name)) throw Error(path + ": missing tensor '" + p.name + "'");
}

std::unique_ptr<Model> load_model(const std::string& dir) {
  const fs::path cfg_path = fs::path(dir) / "config.json";
  if (!fs::exists(cfg_path))
    throw Error("no model at '" + dir + "' (expected config.json and model.safetensors)");
  auto model = std::make_unique<Model>(ModelConfig::load(cfg_path.string()), /*seed=*/0);
  const fs::path weights = fs::path(dir) / "model.safetensors";
  if (!fs::exists(weights)) throw Error("'" + dir + "' has config.json but no model.safetensors");
  load_weights(*model, weights.string());
  return model;
}

}  // namespace cohort::grpo
