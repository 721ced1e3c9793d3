#include "node/collective_torch.h"

#include <torch/torch.h>

#include <vector>

#if COHORT_TORCH_HAS_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace cohort::node {
namespace {

// The raw pointer and stream the collective needs, after checking what it cannot take.
std::vector<GradientShard> shards_of(std::span<const at::Tensor> flat) {
  std::vector<GradientShard> out;
  for (size_t w = 0; w < flat.size(); ++w) {
    const at::Tensor& t = flat[w];
    const std::string who = "worker " + std::to_string(w) + "'s tensor";
    if (!t.defined() || t.scalar_type() != at::kFloat || !t.is_contiguous())
      throw Error(who + " must be a defined, contiguous float32 tensor");
    if (t.numel() != flat[0].numel())
      throw Error(who + " has " + std::to_string(t.numel()) + " values, worker 0's " +
                  std::to_string(flat[0].numel()));
    if (t.is_cuda() != flat[0].is_cuda()) throw Error("the tensors mix CPU and CUDA memory");
    GradientShard s{t.data_ptr<float>(), {}, nullptr};
    if (t.is_cuda()) {
#if COHORT_TORCH_HAS_CUDA
      s.stream = c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#else
      throw Error(who + " is on a CUDA device but this LibTorch has no CUDA");
#endif
    }
    out.push_back(s);
  }
  return out;
}

}  // namespace

bool torch_cuda_usable() {
#if COHORT_TORCH_HAS_CUDA
  return torch::cuda::is_available();
#else
  return false;
#endif
}

void reduce_tensors(Collective& collective, std::span<const at::Tensor> flat,
                    std::span<const std::span<double>> counts, ReduceTo to) {
  if (flat.size() != counts.size()) throw Error("reduce_tensors: one count span per tensor");
  std::vector<GradientShard> shards = shards_of(flat);
  for (size_t w = 0; w < shards.size(); ++w) shards[w].counts = counts[w];
  collective.reduce_sum(shards, flat.empty() ? 0 : static_cast<size_t>(flat[0].numel()), to);
}

void broadcast_tensors(Collective& collective, std::span<const at::Tensor> flat) {
  const std::vector<GradientShard> shards = shards_of(flat);
  std::vector<float*> buffers;
  std::vector<void*> streams;
  for (const auto& s : shards) {
    buffers.push_back(s.grad);
    streams.push_back(s.stream);
  }
  collective.broadcast(buffers, flat.empty() ? 0 : static_cast<size_t>(flat[0].numel()),
                       flat.empty() || !flat[0].is_cuda() ? std::span<void* const>{}
                                                          : std::span<void* const>(streams));
}

}  // namespace cohort::node
