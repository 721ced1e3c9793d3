// Model checkpoints as a Hugging Face folder: config.json + model.safetensors (or shards named
// by model.safetensors.index.json, as transformers writes them), written atomically, loaded by
// parameter name from memory-mapped files with clear errors for anything that does not fit.
//
//   save_model("ckpt/", model, at::kBFloat16);
//   std::unique_ptr<Model> m = load_model("ckpt/");
#pragma once

#include <ATen/core/ScalarType.h>

#include <memory>
#include <string>

#include "grpo/model.h"

namespace cohort::grpo {

// max_shard_bytes > 0 splits weights larger than that into model-0000i-of-0000n.safetensors
// plus model.safetensors.index.json; weight files of an earlier save in the other layout are
// removed so that the folder holds exactly one set.
void save_model(const std::string& dir, const Model& model, at::ScalarType dtype = at::kFloat,
                int64_t max_shard_bytes = 0);

// Reads config.json, then the sharded index when present, else model.safetensors. Throws
// cohort::Error on a missing folder/file, unsupported architecture or dtype, a missing,
// unexpected or duplicated tensor, a shape mismatch, an index naming a missing shard or a
// tensor its shard lacks, or a corrupt file.
std::unique_ptr<Model> load_model(const std::string& dir);

// Loads one safetensors file into an existing model (same rules as load_model).
void load_weights(Model& model, const std::string& safetensors_path);
// Loads a folder's weights (sharded or not) into an existing model.
void load_weights_from_folder(Model& model, const std::string& dir);

}  // namespace cohort::grpo
