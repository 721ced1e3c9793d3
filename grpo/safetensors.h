// Reading and writing the safetensors format (8-byte little-endian header length, a JSON header
// naming each tensor's dtype, shape and byte range, then the raw little-endian data).
// Everything read is validated before use: header bounds, dtypes, shape × dtype = byte range,
// ranges inside the file and covering it without holes or overlaps.
//
//   write_safetensors("model.safetensors", model.named_parameters(), at::kBFloat16);
//   std::vector<NamedTensor> ts = read_safetensors("model.safetensors");
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "grpo/model.h"

namespace cohort::grpo {

// Writes atomically (temporary file, fsync, rename, fsync of the directory). Floating tensors
// are converted to `dtype` (F32, BF16 or F16); integer tensors keep their type.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       at::ScalarType dtype = at::kFloat,
                       const std::map<std::string, std::string>& metadata = {});

// Throws cohort::Error naming the file and the problem (truncated, bad header, bad range...).
std::vector<NamedTensor> read_safetensors(const std::string& path,
                                          std::map<std::string, std::string>* metadata = nullptr);

// Same validation as read_safetensors, but the tensors alias a read-only memory map of the
// file (kept alive by the tensors) instead of holding copies: loading a checkpoint then costs
// no second copy of the weights. Tensors whose data is misaligned for their dtype are copied.
// The tensors must not be written to.
std::vector<NamedTensor> map_safetensors(const std::string& path,
                                         std::map<std::string, std::string>* metadata = nullptr);

}  // namespace cohort::grpo
