// libFuzzer target: the transport reader (FrameOpener) on hostile bytes.
// First input byte picks the mode:
//   even: the rest goes straight to the reader (forged ciphertext, lengths, partial records);
//   odd:  the rest is a list of [u16 BE length][plaintext] records that the harness seals with the
//         sender's key, so lying headers, classes and continuations get past authentication.
// Either way the rest of the input is fed in pieces whose sizes come from the input itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "protocol/error.h"
#include "protocol/framing.h"

using namespace cohort::protocol;

namespace {

noise::Key fixed_key() {
  noise::Key k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(0xa0 + i);
  return k;
}

ChannelLimits small_limits() {
  ChannelLimits l;
  l.max_control_bytes = 4096;
  l.max_bulk_bytes = 200'000;
  l.rekey_interval = 3;  // exercise rekeying on short inputs
  return l;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const bool seal = data[0] & 1;
  const std::uint8_t step_seed = data[1];
  data += 2;
  size -= 2;
  const ChannelLimits limits = small_limits();

  Bytes wire;
  if (seal) {
    noise::CipherState sender(fixed_key());
    for (std::size_t pos = 0; pos + 2 <= size;) {
      std::size_t len = std::size_t{data[pos]} << 8 | data[pos + 1];
      pos += 2;
      len = std::min(len, size - pos);
      len = std::min(len, kMaxTransportPlaintext);
      if (sender.nonce() >= limits.rekey_interval) {
        sender.rekey();
        sender.set_nonce(0);
      }
      Bytes ct;
      sender.encrypt_with_ad({}, ByteView(data + pos, len), ct);
      wire.push_back(static_cast<std::uint8_t>(ct.size() >> 8));
      wire.push_back(static_cast<std::uint8_t>(ct.size()));
      wire.insert(wire.end(), ct.begin(), ct.end());
      pos += len;
    }
  } else {
    wire.assign(data, data + size);
  }

  FrameOpener opener(noise::CipherState(fixed_key()), limits);
  std::size_t delivered = 0;
  try {
    for (std::size_t pos = 0, i = 0; pos < wire.size(); ++i) {
      const std::size_t step = 1 + (step_seed * (i + 1) * 7919u) % 70'000;
      const std::size_t n = std::min(step, wire.size() - pos);
      opener.feed(ByteView(wire.data() + pos, n));
      pos += n;
      while (auto frame = opener.pop()) {
        const std::size_t limit = frame->cls == MessageClass::control ? limits.max_control_bytes
                                  : frame->cls == MessageClass::bulk  ? limits.max_bulk_bytes
                                                                       : 1024;
        if (frame->body.size() > limit) std::abort();  // a message over its limit got through
        delivered += frame->body.size();
      }
    }
  } catch (const ProtocolError&) {
    // Expected for almost every input: the connection would end here.
  }
  if (delivered > wire.size()) std::abort();  // more plaintext than wire bytes
  return 0;
}
