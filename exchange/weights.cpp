#include "exchange/weights.h"

#include <cstring>

#include "common/check.h"
#include "protocol/digest.h"

namespace cohort::exchange {

uint32_t element_bytes(wire::DType dtype) {
  switch (dtype) {
    case wire::DTYPE_UNSPECIFIED:
    case wire::DTYPE_F32:
      return 4;
    case wire::DTYPE_BF16:
      return 2;
    default:
      throw Error("policy dtype " + std::to_string(static_cast<int>(dtype)) +
                  " is not one Cohort publishes (F32 or BF16)");
  }
}

std::string_view dtype_name(wire::DType dtype) {
  return element_bytes(dtype) == 2 ? "bf16" : "fp32";
}

wire::DType parse_policy_dtype(std::string_view name) {
  if (name == "fp32") return wire::DTYPE_F32;
  if (name == "bf16") return wire::DTYPE_BF16;
  throw Error("policy dtype '" + std::string(name) + "' is not one of: fp32, bf16");
}

namespace {

uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

void to_published(wire::DType dtype, std::span<const float> values, char* out) {
  if (element_bytes(dtype) == 4) {
    std::memcpy(out, values.data(), values.size_bytes());
    return;
  }
  for (size_t i = 0; i < values.size(); ++i) {
    const uint16_t b = bf16_bits(values[i]);
    out[2 * i] = static_cast<char>(b & 0xff);
    out[2 * i + 1] = static_cast<char>(b >> 8);
  }
}

std::string to_published(wire::DType dtype, std::span<const float> values) {
  std::string out(values.size() * element_bytes(dtype), '\0');
  to_published(dtype, values, out.data());
  return out;
}

void from_published(wire::DType dtype, std::string_view bytes, std::span<float> out) {
  const uint32_t eb = element_bytes(dtype);
  COHORT_CHECK(bytes.size() == out.size() * eb, "published bytes do not fit the tensor");
  if (eb == 4) {
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return;
  }
  for (size_t i = 0; i < out.size(); ++i) {
    const uint32_t u = (uint32_t{static_cast<unsigned char>(bytes[2 * i])} |
                        uint32_t{static_cast<unsigned char>(bytes[2 * i + 1])} << 8)
                       << 16;
    std::memcpy(&out[i], &u, 4);
  }
}

std::vector<std::pair<uint64_t, uint64_t>> shard_ranges(uint64_t total, uint64_t shard_bytes) {
  COHORT_CHECK(shard_bytes > 0, "shards need a size");
  std::vector<std::pair<uint64_t, uint64_t>> out;
  for (uint64_t b = 0; b < total; b += shard_bytes) out.emplace_back(b, std::min(total, b + shard_bytes));
  return out;
}

std::optional<std::string> blob_list_mismatch(const wire::WeightManifest& m) {
  uint64_t total = 0;
  for (const auto& e : m.tensors()) total += e.size_bytes();
  if (m.shard_bytes() == 0 || m.shard_bytes() > kMaxShardBytes)
    return "manifest shard size " + std::to_string(m.shard_bytes()) + " is outside 1.." +
           std::to_string(kMaxShardBytes);
  const auto ranges = shard_ranges(total, m.shard_bytes());
  if (static_cast<size_t>(m.snapshot_size()) != ranges.size())
    return "manifest lists " + std::to_string(m.snapshot_size()) + " snapshot shards, its " +
           std::to_string(total) + " bytes of tensors make " + std::to_string(ranges.size());
  for (int i = 0; i < m.snapshot_size(); ++i) {
    const auto& s = m.snapshot(i);
    if (s.blake2b().size() != protocol::kDigestLen ||
        s.size_bytes() != ranges[static_cast<size_t>(i)].second - ranges[static_cast<size_t>(i)].first)
      return "manifest snapshot shard " + std::to_string(i) + " has the wrong size or digest length";
  }
  uint64_t to = m.policy_version();
  for (int i = 0; i < m.patches_size(); ++i) {
    const auto& p = m.patches(i);
    if (p.to_version() != to || p.from_version() + 1 != to ||
        p.blob().blake2b().size() != protocol::kDigestLen || p.blob().size_bytes() == 0)
      return "manifest patch " + std::to_string(i) + " does not continue the chain down from v" +
             std::to_string(m.policy_version());
    to = p.from_version();
  }
  if (m.mirrors_size() > kMaxMirrors)
    return "manifest lists " + std::to_string(m.mirrors_size()) + " mirrors (at most " +
           std::to_string(kMaxMirrors) + ")";
  for (const auto& url : m.mirrors())
    if (url.size() > kMaxMirrorUrl || !(url.starts_with("http://") || url.starts_with("https://")))
      return "manifest mirror URL is not an http(s) URL of at most " +
             std::to_string(kMaxMirrorUrl) + " characters";
  return std::nullopt;
}

FetchPlan plan_fetch(const wire::WeightManifest& m, std::optional<uint64_t> held) {
  FetchPlan plan;
  for (const auto& s : m.snapshot()) plan.snapshot_bytes += s.size_bytes();
  if (held && *held == m.policy_version()) {
    plan.nothing = true;
    return plan;
  }
  // Patches are listed newest first; walk down to the one that starts at what is held.
  if (held && *held < m.policy_version()) {
    uint64_t bytes = 0;
    std::vector<const wire::PatchRef*> chain;
    for (const auto& p : m.patches()) {
      chain.push_back(&p);
      bytes += p.blob().size_bytes();
      if (p.from_version() == *held) {
        if (bytes < plan.snapshot_bytes) {
          plan.patches.assign(chain.rbegin(), chain.rend());
          plan.bytes = bytes;
          return plan;
        }
        break;
      }
    }
  }
  plan.bytes = plan.snapshot_bytes;
  return plan;
}

}  // namespace cohort::exchange
