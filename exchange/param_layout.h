// Where each parameter sits in the flat float buffers that gradients and weights travel through:
// the model's parameters in Hugging Face order, each with its name, shape and offset. Both roles
// build it from the same model config, so offsets agree without being sent.
//
//   ParamLayout layout(model);                 // exchange/gradient_wire.cpp (needs LibTorch)
//   float* wq = flat.data() + layout.slots[3].offset;
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cohort::grpo {
class Model;
}

namespace cohort::exchange {

struct ParamSlot {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0, numel = 0;
};

struct ParamLayout {
  ParamLayout() = default;
  explicit ParamLayout(const grpo::Model& model);
  std::vector<ParamSlot> slots;
  size_t total = 0;
};

}  // namespace cohort::exchange
