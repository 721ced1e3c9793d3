// libFuzzer target: the weight patch decoder (exchange/weight_patch.h) on any input, against held
// tensors of the spec vector's shape (`w`: 5 BF16 elements at version 7) and an F32 one (`b`: 3
// elements). A patch is either refused with a sentence and `held` left exactly as it was, or
// applied with every tensor keeping its size; nothing reads or writes out of bounds (ASan), and
// the zstd frame's stated size is bounded before anything is allocated.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "exchange/weight_patch.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view patch(reinterpret_cast<const char*>(data), size);
  std::map<std::string, std::string> held = {{"w", std::string(10, '\x11')},
                                             {"b", std::string(12, '\x22')}};
  const auto before = held;
  const auto refused = cohort::exchange::apply_patch(patch, 7, held, 1 << 16);
  if (refused) {
    if (held != before || refused->empty()) std::abort();
    return 0;
  }
  if (held.size() != before.size() || held.at("w").size() != 10 || held.at("b").size() != 12)
    std::abort();
  return 0;
}
