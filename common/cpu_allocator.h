// A caching allocator for LibTorch's large CPU tensors. glibc serves big blocks with fresh
// mmap()s, so every training step would page-fault through gigabytes of activations again;
// this keeps freed blocks of ≥ 1 MiB in size classes (4 per power of two, ≤ 25% slack) and
// hands them back, the way the CUDA caching allocator does on GPUs.
#pragma once

#include <cstddef>

namespace cohort {

struct CpuAllocatorStats {
  size_t cached_bytes = 0;    // freed blocks held for reuse
  size_t hits = 0, misses = 0;
};

// Installs the allocator as LibTorch's CPU allocator (idempotent). `max_cached_bytes` bounds
// the memory held while unused; blocks beyond it go back to the system.
void install_caching_cpu_allocator(size_t max_cached_bytes = size_t(4) << 30);
CpuAllocatorStats caching_cpu_allocator_stats();
// Turns caching off (freed blocks go straight back to the system) or on again; used by the
// benchmark to measure both policies side by side. No effect before installation.
void set_cpu_allocator_caching(bool enabled);

}  // namespace cohort
