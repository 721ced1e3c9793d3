// libFuzzer target: the top-k gradient codec's decoder (exchange/topk_codec.h) on any payload for
// any tensor size up to 2^17 elements. A payload is either refused with a sentence or decodes to
// finite values, at most ceil(n / 48) of them non-zero in each chunk, and never reads or writes
// out of bounds (ASan). The sparse decoder (decode_entries, what the coordinator folds) refuses
// exactly the same payloads, and its entries scattered into zeros are the dense output.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "exchange/topk_codec.h"

namespace topk = cohort::exchange::topk;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t numel = (std::size_t{data[0]} | std::size_t{data[1]} << 8 |
                             static_cast<std::size_t>(data[2] & 1) << 16);
  const std::string_view payload(reinterpret_cast<const char*>(data + 3), size - 3);
  std::vector<float> out(numel, 1.0f);
  std::vector<std::uint64_t> index;
  std::vector<float> value;
  const bool sparse_refused = topk::decode_entries(payload, numel, 0, index, value).has_value();
  if (topk::decode(payload, out)) {
    if (!sparse_refused) std::abort();
    return 0;
  }
  if (sparse_refused || index.size() != value.size()) std::abort();
  std::vector<float> scattered(numel, 0.0f);
  for (std::size_t k = 0; k < index.size(); ++k) {
    if (index[k] >= numel || (k > 0 && index[k] <= index[k - 1])) std::abort();
    scattered[index[k]] = value[k];
  }
  for (std::size_t i = 0; i < numel; ++i)
    if (scattered[i] != out[i]) std::abort();
  if (payload.size() > topk::max_payload_bytes(numel)) std::abort();
  for (std::size_t begin = 0; begin < numel; begin += topk::kChunk) {
    const std::size_t n = std::min(topk::kChunk, numel - begin);
    std::size_t nonzero = 0;
    for (std::size_t i = begin; i < begin + n; ++i) {
      if (!std::isfinite(out[i])) std::abort();
      nonzero += out[i] != 0.0f;
    }
    if (nonzero > topk::max_kept(n)) std::abort();
  }
  return 0;
}
