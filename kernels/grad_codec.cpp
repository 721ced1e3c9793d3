// FP8 block gradient codec: payload layout in grad_codec.h.
#include "kernels/grad_codec.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "common/check.h"
#include "kernels/cpu_kernels.h"
#include "kernels/fp8.h"
#include "kernels/quantize.h"

static_assert(std::endian::native == std::endian::little,
              "the FP8 codec writes its little-endian payload with memcpy");

namespace cohort::kernels {
namespace {

constexpr uint8_t kMagic[4] = {'C', 'F', '8', 'B'};
constexpr uint8_t kFormatE4M3 = 1;
constexpr int64_t kParallelMin = int64_t{1} << 15;

uint64_t block_count(uint64_t n) { return (n + kFp8BlockCodecBlock - 1) / kFp8BlockCodecBlock; }

CodecResult fail(CodecStatus status, std::string detail, uint64_t numel = 0) {
  return CodecResult{status, std::move(detail), numel};
}

// Writes header, scales and codes of the tile-128 quantization of x (one row) into out.
void write_payload(std::span<const float> x, std::vector<uint8_t>& out) {
  const uint64_t n = x.size();
  const uint64_t blocks = block_count(n);
  out.assign(fp8_e4m3_block_payload_size(n), 0);
  std::memcpy(out.data(), kMagic, 4);
  out[4] = kFp8BlockCodecVersion;
  out[5] = kFormatE4M3;
  const uint16_t block = kFp8BlockCodecBlock;
  std::memcpy(out.data() + 6, &block, 2);
  std::memcpy(out.data() + 8, &n, 8);
  std::vector<float> scales(blocks);
  uint8_t* codes = out.data() + kFp8BlockCodecHeaderBytes + 4 * blocks;
  // One row of n columns: the 1x128 tiles are the codec's blocks, scale index = block index.
  quantize_e4m3_tile128(x.data(), 1, static_cast<int64_t>(n), codes, scales.data());
  std::memcpy(out.data() + kFp8BlockCodecHeaderBytes, scales.data(), 4 * blocks);
}

void require_finite(std::span<const float> x, const char* what) {
  const float m = detail::active_kernels().amax(x.data(), static_cast<int64_t>(x.size()));
  if (!std::isfinite(m)) {
    throw Error(std::string(what) + ": the gradient holds a NaN or inf; it cannot be encoded " +
                "(skip this update, as the trainer's outlier guard should have)");
  }
}

bool any_nan_code(const uint8_t* codes, uint64_t n, uint64_t* where) {
  // Branch-free inner loop over chunks so it vectorizes; locate the index only on failure.
  constexpr uint64_t kChunk = 4096;
  for (uint64_t c0 = 0; c0 < n; c0 += kChunk) {
    const uint64_t c1 = std::min(n, c0 + kChunk);
    uint8_t hit = 0;
    for (uint64_t i = c0; i < c1; ++i) hit |= static_cast<uint8_t>((codes[i] & 0x7F) == 0x7F);
    if (hit) {
      for (uint64_t i = c0; i < c1; ++i) {
        if ((codes[i] & 0x7F) == 0x7F) {
          *where = i;
          return true;
        }
      }
    }
  }
  return false;
}

}  // namespace

size_t fp8_e4m3_block_payload_size(uint64_t numel) {
  return kFp8BlockCodecHeaderBytes + 4 * block_count(numel) + numel;
}

const char* codec_status_name(CodecStatus status) {
  switch (status) {
    case CodecStatus::ok: return "ok";
    case CodecStatus::truncated: return "truncated";
    case CodecStatus::trailing_bytes: return "trailing_bytes";
    case CodecStatus::bad_magic: return "bad_magic";
    case CodecStatus::unsupported_version: return "unsupported_version";
    case CodecStatus::unsupported_format: return "unsupported_format";
    case CodecStatus::bad_block_size: return "bad_block_size";
    case CodecStatus::numel_mismatch: return "numel_mismatch";
    case CodecStatus::non_finite_scale: return "non_finite_scale";
    case CodecStatus::negative_scale: return "negative_scale";
    case CodecStatus::nan_code: return "nan_code";
  }
  return "unknown";
}

CodecResult inspect_fp8_e4m3_block(std::span<const uint8_t> p) {
  if (p.size() < kFp8BlockCodecHeaderBytes) {
    return fail(CodecStatus::truncated, "payload of " + std::to_string(p.size()) +
                                             " bytes is shorter than the 16-byte header");
  }
  if (std::memcmp(p.data(), kMagic, 4) != 0) {
    return fail(CodecStatus::bad_magic, "payload does not start with \"CF8B\"");
  }
  if (p[4] != kFp8BlockCodecVersion) {
    return fail(CodecStatus::unsupported_version,
                "version " + std::to_string(p[4]) + ", this build reads version 1");
  }
  if (p[5] != kFormatE4M3) {
    return fail(CodecStatus::unsupported_format,
                "element format " + std::to_string(p[5]) + ", expected 1 (E4M3)");
  }
  uint16_t block = 0;
  std::memcpy(&block, p.data() + 6, 2);
  if (block != kFp8BlockCodecBlock) {
    return fail(CodecStatus::bad_block_size,
                "block size " + std::to_string(block) + ", expected 128");
  }
  uint64_t n = 0;
  std::memcpy(&n, p.data() + 8, 8);
  // n <= p.size() before any arithmetic on it, so the size computation cannot overflow.
  const uint64_t body = p.size() - kFp8BlockCodecHeaderBytes;
  if (n > body) {
    return fail(CodecStatus::truncated,
                "header claims " + std::to_string(n) + " elements but only " +
                    std::to_string(body) + " bytes follow it", n);
  }
  const uint64_t expected = fp8_e4m3_block_payload_size(n);
  if (p.size() < expected) {
    return fail(CodecStatus::truncated, "payload has " + std::to_string(p.size()) +
                                             " bytes, " + std::to_string(expected) +
                                             " expected for " + std::to_string(n) + " elements", n);
  }
  if (p.size() > expected) {
    return fail(CodecStatus::trailing_bytes, "payload has " + std::to_string(p.size()) +
                                                 " bytes, " + std::to_string(expected) +
                                                 " expected for " + std::to_string(n) + " elements", n);
  }
  const uint64_t blocks = block_count(n);
  const uint8_t* scale_bytes = p.data() + kFp8BlockCodecHeaderBytes;
  for (uint64_t b = 0; b < blocks; ++b) {
    float s;
    std::memcpy(&s, scale_bytes + 4 * b, 4);
    if (!std::isfinite(s)) {
      return fail(CodecStatus::non_finite_scale, "scale of block " + std::to_string(b) + " is not finite", n);
    }
    if (std::signbit(s)) {
      return fail(CodecStatus::negative_scale, "scale of block " + std::to_string(b) + " is negative", n);
    }
  }
  uint64_t where = 0;
  if (any_nan_code(scale_bytes + 4 * blocks, n, &where)) {
    return fail(CodecStatus::nan_code, "element " + std::to_string(where) + " is an E4M3 NaN code", n);
  }
  return CodecResult{CodecStatus::ok, {}, n};
}

CodecResult decode_fp8_e4m3_block(std::span<const uint8_t> payload, std::span<float> out) {
  CodecResult r = inspect_fp8_e4m3_block(payload);
  if (!r.ok()) return r;
  if (r.numel != out.size()) {
    return fail(CodecStatus::numel_mismatch, "payload holds " + std::to_string(r.numel) +
                                                 " elements, the tensor has " +
                                                 std::to_string(out.size()), r.numel);
  }
  const uint64_t blocks = block_count(r.numel);
  std::vector<float> scales(blocks);
  std::memcpy(scales.data(), payload.data() + kFp8BlockCodecHeaderBytes, 4 * blocks);
  dequantize_e4m3_tile128(payload.data() + kFp8BlockCodecHeaderBytes + 4 * blocks, scales.data(),
                          1, static_cast<int64_t>(r.numel), out.data());
  return r;
}

std::vector<uint8_t> encode_fp8_e4m3_block(std::span<const float> x) {
  require_finite(x, "encode_fp8_e4m3_block");
  std::vector<uint8_t> out;
  write_payload(x, out);
  return out;
}

Fp8GradEncoder::Fp8GradEncoder(size_t numel) : residual_(numel, 0.0f) {}

void Fp8GradEncoder::reset() { std::fill(residual_.begin(), residual_.end(), 0.0f); }

std::vector<uint8_t> Fp8GradEncoder::encode(std::span<const float> g) {
  if (g.size() != residual_.size()) {
    throw Error("Fp8GradEncoder: gradient has " + std::to_string(g.size()) +
                " elements, the encoder was made for " + std::to_string(residual_.size()));
  }
  require_finite(g, "Fp8GradEncoder::encode");
  const int64_t n = static_cast<int64_t>(g.size());
  float* e = residual_.data();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) e[i] += g[i];

  std::vector<uint8_t> out;
  write_payload(residual_, out);

  // residual = e - decode(payload), tile by tile from the codes and scales just written.
  const detail::CpuKernels& k = detail::active_kernels();
  const int64_t blocks = static_cast<int64_t>(block_count(g.size()));
  const uint8_t* scale_bytes = out.data() + kFp8BlockCodecHeaderBytes;
  const uint8_t* codes = scale_bytes + 4 * blocks;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * kFp8BlockCodecBlock, len = std::min(kFp8BlockCodecBlock, n - i0);
    float s;
    std::memcpy(&s, scale_bytes + 4 * b, 4);
    float decoded[kFp8BlockCodecBlock];
    k.dequantize(codes + i0, len, s, decoded);
    for (int64_t i = 0; i < len; ++i) e[i0 + i] -= decoded[i];
  }
  return out;
}

}  // namespace cohort::kernels
