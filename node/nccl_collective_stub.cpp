// Builds without the CUDA toolkit or NCCL: the NCCL collective reports why it is missing.
#include "node/nccl_collective.h"

namespace cohort::node {

bool nccl_built() { return false; }

int cuda_device_count(std::string* why) {
  if (why)
    *why =
        "this build of cohort has no CUDA/NCCL (configure with the CUDA toolkit and NCCL "
        "installed)";
  return 0;
}

CudaDeviceInfo cuda_device_info(int) {
  throw CollectiveError(CollectiveFailure::no_device, "this build of cohort has no CUDA support");
}

std::unique_ptr<Collective> make_nccl_collective(const NcclOptions&) {
  throw CollectiveError(
      CollectiveFailure::no_device,
      "this build of cohort has no NCCL collective: install the CUDA toolkit and NCCL "
      "(nccl.h, libnccl) and reconfigure with COHORT_CUDA=AUTO or ON");
}

NcclTiming time_nccl_collective(const NcclOptions& options, size_t, int) {
  make_nccl_collective(options);
  return {};
}

}  // namespace cohort::node
