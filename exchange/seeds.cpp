#include "exchange/seeds.h"

#include <string>

namespace cohort::exchange {

uint64_t prompt_seed(uint64_t round_seed, uint64_t index) {
  uint64_t z = round_seed * 0x9E3779B97F4A7C15ull + index + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

namespace {
template <typename T>
protocol::Digest digest_u32le(std::span<const T> ids) {
  std::string le;
  le.reserve(ids.size() * 4);
  for (T t : ids) {
    const auto v = static_cast<uint32_t>(t);
    for (int b = 0; b < 4; ++b) le.push_back(static_cast<char>((v >> (8 * b)) & 0xff));
  }
  return protocol::blake2b_256(
      protocol::ByteView(reinterpret_cast<const uint8_t*>(le.data()), le.size()));
}
}  // namespace

protocol::Digest completion_digest(std::span<const uint32_t> ids) { return digest_u32le(ids); }
protocol::Digest completion_digest(std::span<const int64_t> ids) { return digest_u32le(ids); }

}  // namespace cohort::exchange
