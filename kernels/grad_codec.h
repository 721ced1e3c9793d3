// The FP8 gradient codec for the wire (CODEC_FP8_E4M3_BLOCK in the protocol schema): E4M3 codes
// in blocks of 128 with one FP32 scale per block, ~1.03 bytes per parameter, and error feedback
// on the sending side so that what quantization drops from one update is sent with the next.
//
//   Fp8GradEncoder enc(numel);                        // node: one per tensor, lives across steps
//   std::vector<uint8_t> payload = enc.encode(grad);  // grad + carried residual, quantized
//   ...
//   std::vector<float> update(numel);                 // coordinator: size from the model shape
//   CodecResult r = decode_fp8_e4m3_block(payload, update);
//   if (!r.ok()) reject(codec_status_name(r.status), r.detail);
//
// Payload, version 1 (all integers and floats little-endian):
//   offset     size    field
//   0          4       magic "CF8B" (0x43 0x46 0x38 0x42)
//   4          1       version = 1
//   5          1       element format = 1 (E4M3: bias 7, no inf, NaN = S.1111.111)
//   6          2       block size, u16 = 128
//   8          8       element count n, u64
//   16         4*B     B = ceil(n / 128) block scales, IEEE binary32, finite and >= +0
//   16 + 4*B   n       E4M3 codes; block b holds elements [128 b, min(n, 128 b + 128))
// Element i decodes to e4m3_to_float(code[i]) * scale[i / 128] (fp8.h); the NaN codes 0x7F and
// 0xFF never appear. The encoder's scale is max(amax(block) / 448, 2^-126) (quantize.h), so
// per element |x - x^| <= max(2^-4 |x|, 2^-10 scale) up to FP32 rounding of the scale.
// A decoder must refuse anything else; decode_fp8_e4m3_block checks every field above, the exact
// total size, and every scale and code, before writing any output.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cohort::kernels {

inline constexpr uint8_t kFp8BlockCodecVersion = 1;
inline constexpr int64_t kFp8BlockCodecBlock = 128;
inline constexpr size_t kFp8BlockCodecHeaderBytes = 16;

// Exact payload size for n elements: 16 + 4 ceil(n / 128) + n.
size_t fp8_e4m3_block_payload_size(uint64_t numel);

enum class CodecStatus : uint8_t {
  ok,
  truncated,           // fewer bytes than the header or the header's element count require
  trailing_bytes,       // more bytes than the header's element count require
  bad_magic,
  unsupported_version,
  unsupported_format,   // element format other than E4M3
  bad_block_size,        // block size other than 128
  numel_mismatch,       // element count differs from the tensor the caller expects
  non_finite_scale,
  negative_scale,
  nan_code,             // an E4M3 NaN code among the elements
};
const char* codec_status_name(CodecStatus status);

struct [[nodiscard]] CodecResult {
  CodecStatus status = CodecStatus::ok;
  std::string detail;  // for people: which field, which index, what value
  uint64_t numel = 0;  // element count from the header when it could be read
  bool ok() const { return status == CodecStatus::ok; }
};

// Validates a payload completely without decoding it.
CodecResult inspect_fp8_e4m3_block(std::span<const uint8_t> payload);

// Validates, then decodes into `out`, whose size must equal the payload's element count.
// On any failure `out` is left untouched.
CodecResult decode_fp8_e4m3_block(std::span<const uint8_t> payload, std::span<float> out);

// One-shot encoding without error feedback. Throws cohort::Error on a NaN or inf in x.
std::vector<uint8_t> encode_fp8_e4m3_block(std::span<const float> x);

// Error-feedback encoder for one tensor. encode(g) quantizes e = g + residual and keeps
// residual = e - decode(payload), so over T steps
//   sum_t decode(payload_t) = sum_t g_t - residual_T   exactly (up to FP32 rounding of e),
// and |residual| stays within one step's quantization error instead of growing.
class Fp8GradEncoder {
 public:
  explicit Fp8GradEncoder(size_t numel);

  // Throws cohort::Error when g.size() != numel() or g holds a NaN or inf (state unchanged).
  std::vector<uint8_t> encode(std::span<const float> g);

  std::span<const float> residual() const { return residual_; }
  size_t numel() const { return residual_.size(); }
  void reset();  // drop the carried residual (e.g. when the policy version jumps)

 private:
  std::vector<float> residual_;
};

}  // namespace cohort::kernels
