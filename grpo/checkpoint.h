// Model checkpoints as a Hugging Face folder: config.json + model.safetensors, written
// atomically, loaded by parameter name with clear errors for anything that does not fit.
//
//   save_model("ckpt/", model, at::kBFloat16);
//   std::unique_ptr<Model> m = load_model("ckpt/");
#pragma once

#include <ATen/core/ScalarType.h>

#include <memory>
#include <string>

#include "grpo/model.h"

namespace cohort::grpo {

void save_model(const std::string& dir, const Model& model, at::ScalarType dtype = at::kFloat);

// Throws cohort::Error on a missing folder/file, unsupported architecture, a missing or
// unexpected tensor, a shape mismatch or a corrupt file.
std::unique_ptr<Model> load_model(const std::string& dir);

// Loads tensors into an existing model (same rules as load_model).
void load_weights(Model& model, const std::string& safetensors_path);

}  // namespace cohort::grpo
