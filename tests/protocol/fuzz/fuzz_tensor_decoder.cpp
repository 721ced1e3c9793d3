// libFuzzer target: the tensor schema decoder (check_tensor) on any EncodedTensor the protobuf
// parser accepts, and the signed-update header scan on any body (signed by the harness so that
// the scan, which only runs after the signature verifies, is reached).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "protocol/error.h"
#include "protocol/signed_update.h"
#include "protocol/tensor_codec.h"

using namespace cohort::protocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string input(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    static const Identity node = Identity::from_seed(Bytes(32, 7));
    static const Identity coordinator = Identity::from_seed(Bytes(32, 9));
    const cohort::wire::SignedUpdate su = sign_update_body(input, node);
    const VerifiedUpdate r =
        verify_update(su, {.recipient = coordinator.id(), .current_version = 10, .staleness_bound = 5});
    if (r.verdict == UpdateVerdict::bad_signature) std::abort();  // we signed it ourselves
    if (r && r.header.tensors_size() != 0) std::abort();
    return 0;
  }
  cohort::wire::EncodedTensor tensor;
  if (!tensor.ParseFromString(input)) return 0;
  try {
    const TensorView v = check_tensor(tensor);
    const auto expected = expected_payload_size(v.dtype, v.numel, v.codec, v.block_size);
    // Exact for fixed-size codecs; the variable-size top-k codec's payload is at most the bound.
    if (!expected || (v.codec == cohort::wire::CODEC_TOPK_Q4 ? v.payload.size() > *expected
                                                             : *expected != v.payload.size()))
      std::abort();
    std::uint64_t numel = 1;
    for (std::int64_t d : v.shape) numel *= static_cast<std::uint64_t>(d);
    if (numel != v.numel) std::abort();
    volatile std::uint8_t sum = 0;
    for (std::uint8_t b : v.payload) sum = sum + b;  // ASan: the view stays in bounds
  } catch (const ProtocolError&) {
  }
  return 0;
}
