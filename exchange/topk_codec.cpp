#include "exchange/topk_codec.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/check.h"

namespace cohort::exchange::topk {

namespace {

// Round to nearest even, to BF16 (the upper half of an F32); a finite value never becomes Inf.
uint16_t to_bf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return (rounded & 0x7f80u) == 0x7f80u ? static_cast<uint16_t>(bits >> 16)
                                        : static_cast<uint16_t>(rounded);
}

float from_bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

void put_u16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}

uint16_t get_u16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

void encode_chunk(std::span<const float> v, std::vector<uint32_t>& kept, std::string& out) {
  kept.clear();
  for (uint32_t i = 0; i < v.size(); ++i)
    if (v[i] != 0.0f) kept.push_back(i);
  const size_t k = max_kept(v.size());
  if (kept.size() > k) {
    // Largest magnitudes first, the lower position on a tie: one answer for any input.
    std::nth_element(kept.begin(), kept.begin() + static_cast<std::ptrdiff_t>(k), kept.end(),
                     [&](uint32_t a, uint32_t b) {
                       const float fa = std::fabs(v[a]), fb = std::fabs(v[b]);
                       return fa > fb || (fa == fb && a < b);
                     });
    kept.resize(k);
    std::sort(kept.begin(), kept.end());
  }
  put_u16(out, static_cast<uint16_t>(kept.size()));
  if (kept.empty()) return;

  float lo = INFINITY, hi = 0;
  for (uint32_t i : kept) {
    lo = std::min(lo, std::fabs(v[i]));
    hi = std::max(hi, std::fabs(v[i]));
  }
  // Geometric levels from the smallest kept magnitude to the largest: the kept values of a
  // gradient chunk spread over a decade or two, and a relative step suits them all.
  std::array<float, kLevels> level{};
  for (size_t m = 0; m < kLevels; ++m) {
    const double t = double(lo) * std::pow(double(hi) / double(lo), double(m) / (kLevels - 1));
    const uint16_t h = to_bf16(static_cast<float>(m == 0 ? lo : m == kLevels - 1 ? hi : t));
    level[m] = from_bf16(h);
    put_u16(out, h);
  }
  // Positions, 12 bits each, least significant bit first.
  uint64_t acc = 0;
  int bits = 0;
  for (uint32_t i : kept) {
    acc |= uint64_t{i} << bits;
    bits += static_cast<int>(kIndexBits);
    for (; bits >= 8; bits -= 8, acc >>= 8) out.push_back(static_cast<char>(acc & 0xff));
  }
  if (bits > 0) out.push_back(static_cast<char>(acc & 0xff));
  // Codes, two per byte, the first in the low nibble: sign bit 3, nearest level in bits 0-2.
  for (size_t j = 0; j < kept.size(); j += 2) {
    uint8_t byte = 0;
    for (size_t h = 0; h < 2 && j + h < kept.size(); ++h) {
      const float x = v[kept[j + h]];
      const float a = std::fabs(x);
      size_t best = 0;
      for (size_t m = 1; m < kLevels; ++m)
        if (std::fabs(level[m] - a) < std::fabs(level[best] - a)) best = m;
      const uint8_t code = static_cast<uint8_t>((x < 0 ? 8 : 0) | best);
      byte = static_cast<uint8_t>(byte | (code << (4 * h)));
    }
    out.push_back(static_cast<char>(byte));
  }
}

}  // namespace

uint64_t max_payload_bytes(uint64_t numel) {
  const uint64_t full = numel / kChunk, rest = numel % kChunk;
  return full * chunk_bytes(max_kept(kChunk)) + (rest ? chunk_bytes(max_kept(rest)) : 0);
}

std::string encode(std::span<const float> values) {
  for (float x : values)
    if (!std::isfinite(x)) throw Error("the top-k codec was given NaN or Inf");
  std::string out;
  out.reserve(max_payload_bytes(values.size()));
  std::vector<uint32_t> kept;
  for (size_t c = 0; c < values.size(); c += kChunk)
    encode_chunk(values.subspan(c, std::min(kChunk, values.size() - c)), kept, out);
  return out;
}

namespace {

// The one decoder: every rule of the format checked, each chunk announced to `chunk(begin, n)`
// before its kept entries go to `put(position in the tensor, value)`.
template <class Chunk, class Put>
std::optional<std::string> decode_with(std::string_view payload, size_t numel, Chunk chunk, Put put) {
  const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
  const size_t size = payload.size();
  size_t pos = 0;
  auto fail = [&](size_t c, const std::string& why) {
    return std::optional<std::string>("top-k chunk " + std::to_string(c) + ": " + why);
  };
  for (size_t c = 0, begin = 0; begin < numel; ++c, begin += kChunk) {
    const size_t n = std::min(kChunk, numel - begin);
    chunk(begin, n);
    if (size - pos < 2) return fail(c, "truncated before its count");
    const size_t kept = get_u16(p + pos);
    if (kept > max_kept(n))
      return fail(c, "keeps " + std::to_string(kept) + " entries, at most " +
                         std::to_string(max_kept(n)) + " allowed");
    if (size - pos < chunk_bytes(kept)) return fail(c, "truncated");
    pos += 2;
    if (kept == 0) continue;
    std::array<float, kLevels> level{};
    for (size_t m = 0; m < kLevels; ++m, pos += 2) {
      const uint16_t h = get_u16(p + pos);
      if ((h & 0x8000u) || (h & 0x7f80u) == 0x7f80u)
        return fail(c, "codebook level " + std::to_string(m) + " is negative, Inf or NaN");
      level[m] = from_bf16(h);
      if (m > 0 && level[m] < level[m - 1]) return fail(c, "codebook levels decrease");
    }
    const size_t index_bytes = (kept * kIndexBits + 7) / 8;
    uint64_t acc = 0;
    int bits = 0;
    size_t byte = pos;
    int64_t previous = -1;
    std::array<uint16_t, max_kept(kChunk)> at;  // kept <= max_kept(n) <= this
    for (size_t j = 0; j < kept; ++j) {
      while (bits < static_cast<int>(kIndexBits)) {
        acc |= uint64_t{p[byte++]} << bits;
        bits += 8;
      }
      const uint32_t i = static_cast<uint32_t>(acc & ((1u << kIndexBits) - 1));
      acc >>= kIndexBits;
      bits -= static_cast<int>(kIndexBits);
      if (i >= n) return fail(c, "position " + std::to_string(i) + " is past its end");
      if (static_cast<int64_t>(i) <= previous) return fail(c, "positions are not increasing");
      previous = i;
      at[j] = static_cast<uint16_t>(i);
    }
    if (acc != 0) return fail(c, "padding bits after the positions are not zero");
    pos += index_bytes;
    for (size_t j = 0; j < kept; ++j) {
      const uint8_t code = static_cast<uint8_t>((p[pos + j / 2] >> (4 * (j % 2))) & 0xf);
      put(begin + at[j], (code & 8) ? -level[code & 7] : level[code & 7]);
    }
    if (kept % 2 && (p[pos + kept / 2] >> 4)) return fail(c, "the padding nibble is not zero");
    pos += (kept + 1) / 2;
  }
  if (pos != size)
    return std::optional<std::string>(std::to_string(size - pos) + " bytes after the last chunk");
  return std::nullopt;
}

}  // namespace

std::optional<std::string> decode(std::string_view payload, std::span<float> out) {
  return decode_with(
      payload, out.size(),
      [&](size_t begin, size_t n) { std::fill_n(out.begin() + static_cast<std::ptrdiff_t>(begin), n, 0.0f); },
      [&](size_t i, float v) { out[i] = v; });
}

std::optional<std::string> decode_entries(std::string_view payload, size_t numel, uint64_t base,
                                          std::vector<uint64_t>& index, std::vector<float>& value) {
  return decode_with(
      payload, numel, [](size_t, size_t) {},
      [&](size_t i, float v) {
        index.push_back(base + i);
        value.push_back(v);
      });
}

}  // namespace cohort::exchange::topk
