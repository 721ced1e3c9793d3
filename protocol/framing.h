// Application messages over Noise transport messages, without I/O (docs/PROTOCOL.md, "Framing").
// FrameSealer turns one message into wire bytes; FrameOpener takes wire bytes in any split and
// yields messages, checking every length against ChannelLimits before it allocates anything.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>

#include "protocol/bytes.h"
#include "protocol/noise.h"

namespace cohort::protocol {

// Transport-message plaintext capacity: 65535 minus the Poly1305 tag.
inline constexpr std::size_t kMaxTransportPlaintext = noise::kMaxMessageLen - noise::kTagLen;
// Application message header: class (1 byte) || body length (u32 big-endian).
inline constexpr std::size_t kFrameHeaderLen = 5;
// Body capacity reserved when a message starts; beyond it the body grows only as bytes arrive,
// because the announced length is only a claim.
inline constexpr std::size_t kBodyInitialReserve = 1 << 20;

// Control messages stay small; bulk messages (tensor chunks, updates, manifests) may be large.
// verdict is sent once by the responder right after the handshake.
enum class MessageClass : std::uint8_t { control = 0, bulk = 1, verdict = 2 };

struct ChannelLimits {
  std::uint32_t max_control_bytes = 256 * 1024;
  // Bulk data streams in pieces of 1 MiB (tensor chunks, update chunks): no message needs more.
  std::uint32_t max_bulk_bytes = 4 * 1024 * 1024;
  // Transport messages per key: both sides rekey and restart the nonce at this count, so a nonce
  // never wraps and one key never protects more than interval * 64 KiB.
  std::uint64_t rekey_interval = std::uint64_t{1} << 20;
  std::chrono::milliseconds handshake_timeout{10'000};  // whole handshake, connect included
  std::chrono::milliseconds idle_timeout{120'000};      // no byte received for this long
  std::chrono::milliseconds write_timeout{60'000};      // one send that makes no progress
};

struct Frame {
  MessageClass cls = MessageClass::control;
  Bytes body;
};

class FrameSealer {
 public:
  FrameSealer(noise::CipherState send, std::uint64_t rekey_interval);
  // Appends the wire bytes of one message (one or more u16-length-prefixed transport messages).
  void seal(MessageClass cls, ByteView body, Bytes& out);

 private:
  void seal_one(const std::uint8_t* header, std::size_t header_len, const std::uint8_t* data,
                std::size_t len, Bytes& out);
  noise::CipherState cipher_;
  std::uint64_t rekey_interval_;
};

class FrameOpener {
 public:
  FrameOpener(noise::CipherState recv, const ChannelLimits& limits);

  // Consumes all of `wire`. Throws ProtocolError (authentication_failed, message_too_large,
  // malformed); after a throw the opener is unusable and the connection must end.
  void feed(ByteView wire);
  // The next complete message, in order.
  [[nodiscard]] std::optional<Frame> pop();
  [[nodiscard]] bool mid_message() const { return in_message_ || pending_len_ > 0; }

 private:
  void open_transport(const std::uint8_t* ciphertext, std::size_t len);

  noise::CipherState cipher_;
  ChannelLimits limits_;
  // Partial transport message (length prefix included) carried between feeds.
  std::uint8_t pending_[2 + noise::kMaxMessageLen];
  std::size_t pending_len_ = 0;
  std::uint8_t plain_[noise::kMaxMessageLen];
  bool in_message_ = false;
  Frame current_;
  std::size_t remaining_ = 0;
  std::deque<Frame> ready_;
};

}  // namespace cohort::protocol
