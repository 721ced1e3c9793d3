// LibTorch tensors into a node::Collective: CPU tensors go as host pointers (the CPU twin);
// on a CUDA build of LibTorch, CUDA tensors go with their device's current stream (NCCL).
//
//   reduce_tensors(devices.collective(), flat_grads, counts);  // flat_grads[0] = Σ flat_grads
#pragma once

#include <ATen/core/Tensor.h>

#include <span>

#include "node/collective.h"

namespace cohort::node {

// True when this build's LibTorch has CUDA (compiled against c10_cuda) and a device is usable.
bool torch_cuda_usable();

// flat: one contiguous float32 tensor per worker, all of one numel, on one kind of device;
// counts: one span per worker. Throws cohort::Error on tensors the collective cannot take.
void reduce_tensors(Collective& collective, std::span<const at::Tensor> flat,
                    std::span<const std::span<double>> counts, ReduceTo to = ReduceTo::worker0);

// flat[0]'s values into every other tensor (weights of one policy version).
void broadcast_tensors(Collective& collective, std::span<const at::Tensor> flat);

}  // namespace cohort::node
