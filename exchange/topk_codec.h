// The sparse gradient codec (wire::CODEC_TOPK_Q4, round setting gradient_codec = "topk"): in
// every chunk of 4096 elements the 1-in-48 largest magnitudes, their 12-bit positions and a
// 4-bit code each (sign + one of 8 magnitudes from the chunk's own BF16 codebook). About
// 0.046 bytes per parameter against FP8's 1.04. docs/PROTOCOL.md ("Top-k codec") gives the
// format to the byte.
//
// The encoder is a pure function of the values: no error feedback, no state, no randomness. The
// coordinator's audit therefore recomputes the lease gradient, encodes it with the same function
// and compares what it decodes with what the peer sent (docs/PROTOCOL.md, "Audits").
//
//   std::string p = topk::encode(grad);                      // node
//   if (auto err = topk::decode(p, out)) refuse(*err);       // coordinator: every rule checked
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cohort::exchange::topk {

inline constexpr size_t kChunk = 4096;    // elements per chunk (the wire's block_size)
inline constexpr size_t kKeepOneIn = 48;  // a chunk of n elements keeps at most ceil(n / 48)
inline constexpr size_t kIndexBits = 12;  // log2(kChunk)
inline constexpr size_t kLevels = 8;      // magnitudes in a chunk's codebook

// At most this many entries of a chunk of n elements are kept.
[[nodiscard]] constexpr size_t max_kept(size_t n) { return (n + kKeepOneIn - 1) / kKeepOneIn; }
// Bytes of one chunk that keeps `kept` entries.
[[nodiscard]] constexpr size_t chunk_bytes(size_t kept) {
  return kept == 0 ? 2 : 2 + 2 * kLevels + (kept * kIndexBits + 7) / 8 + (kept + 1) / 2;
}
// The largest payload a tensor of `numel` elements can have (what check_tensor bounds by).
[[nodiscard]] uint64_t max_payload_bytes(uint64_t numel);

// Throws cohort::Error when a value is NaN or Inf.
[[nodiscard]] std::string encode(std::span<const float> values);

// Writes every element of `out` (zero where nothing was kept). On a payload that breaks any rule
// of the format, returns a sentence saying which (and `out` holds nothing useful).
[[nodiscard]] std::optional<std::string> decode(std::string_view payload, std::span<float> out);
// The same checks, for a tensor of `numel` elements, without writing its zeros: appends each kept
// entry's position (+ `base`, its tensor's offset in a flat layout), increasing, and its value.
// On an error the appended entries mean nothing.
[[nodiscard]] std::optional<std::string> decode_entries(std::string_view payload, size_t numel,
                                                        uint64_t base, std::vector<uint64_t>& index,
                                                        std::vector<float>& value);

}  // namespace cohort::exchange::topk
