// Byte buffers as the protocol passes them around, and hex for keys in files and logs.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cohort::protocol {

using Bytes = std::vector<std::uint8_t>;
using ByteView = std::span<const std::uint8_t>;

[[nodiscard]] inline ByteView as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

[[nodiscard]] std::string to_hex(ByteView bytes);
// nullopt when `hex` has odd length or a non-hex character.
[[nodiscard]] std::optional<Bytes> from_hex(std::string_view hex);

}  // namespace cohort::protocol
