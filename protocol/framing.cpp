#include "protocol/framing.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "protocol/error.h"

namespace cohort::protocol {
namespace {

void maybe_rekey(noise::CipherState& c, std::uint64_t interval) {
  if (c.nonce() >= interval) {
    c.rekey();
    c.set_nonce(0);
  }
}

std::uint32_t limit_for(MessageClass cls, const ChannelLimits& limits) {
  switch (cls) {
    case MessageClass::control: return limits.max_control_bytes;
    case MessageClass::bulk: return limits.max_bulk_bytes;
    case MessageClass::verdict: return 1024;
  }
  return 0;
}

}  // namespace

FrameSealer::FrameSealer(noise::CipherState send, std::uint64_t rekey_interval)
    : cipher_(std::move(send)), rekey_interval_(rekey_interval) {
  COHORT_CHECK(rekey_interval_ > 0 && rekey_interval_ < noise::kMaxNonce);
}

void FrameSealer::seal_one(const std::uint8_t* header, std::size_t header_len,
                           const std::uint8_t* data, std::size_t len, Bytes& out) {
  maybe_rekey(cipher_, rekey_interval_);
  const std::size_t plain = header_len + len;
  const std::size_t wire = plain + noise::kTagLen;
  const std::size_t at = out.size();
  out.resize(at + 2 + wire);
  std::uint8_t* p = out.data() + at;
  p[0] = static_cast<std::uint8_t>(wire >> 8);
  p[1] = static_cast<std::uint8_t>(wire);
  if (header_len == 0) {
    cipher_.encrypt_to(data, len, p + 2);  // straight from the caller's buffer
    return;
  }
  std::memcpy(p + 2, header, header_len);
  if (len) std::memcpy(p + 2 + header_len, data, len);
  cipher_.encrypt_to(p + 2, plain, p + 2);
}

void FrameSealer::seal(MessageClass cls, ByteView body, Bytes& out) {
  COHORT_CHECK(body.size() <= 0xffffffffu, "message over 4 GiB");
  const std::uint32_t n = static_cast<std::uint32_t>(body.size());
  const std::uint8_t header[kFrameHeaderLen] = {
      static_cast<std::uint8_t>(cls), static_cast<std::uint8_t>(n >> 24),
      static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8),
      static_cast<std::uint8_t>(n)};
  const std::size_t chunks =
      1 + (body.size() + kFrameHeaderLen > kMaxTransportPlaintext
               ? (body.size() + kFrameHeaderLen - 1) / kMaxTransportPlaintext
               : 0);
  out.reserve(out.size() + body.size() + kFrameHeaderLen + chunks * (2 + noise::kTagLen));
  std::size_t first = std::min(body.size(), kMaxTransportPlaintext - kFrameHeaderLen);
  seal_one(header, kFrameHeaderLen, body.data(), first, out);
  for (std::size_t pos = first; pos < body.size();) {
    const std::size_t len = std::min(body.size() - pos, kMaxTransportPlaintext);
    seal_one(nullptr, 0, body.data() + pos, len, out);
    pos += len;
  }
}

// ---------------------------------------------------------------------------------------------

FrameOpener::FrameOpener(noise::CipherState recv, const ChannelLimits& limits)
    : cipher_(std::move(recv)), limits_(limits) {
  COHORT_CHECK(limits_.rekey_interval > 0 && limits_.rekey_interval < noise::kMaxNonce);
}

void FrameOpener::open_transport(const std::uint8_t* ciphertext, std::size_t len) {
  maybe_rekey(cipher_, limits_.rekey_interval);
  if (in_message_) {
    // Continuation: decrypt straight into the message body.
    const std::size_t n = len - noise::kTagLen;
    if (n == 0) throw ProtocolError(ErrorCode::malformed, "empty transport message inside a message");
    if (n > remaining_) {
      throw ProtocolError(ErrorCode::malformed, "transport message runs past the end of its message");
    }
    Bytes& body = current_.body;
    const std::size_t at = body.size();
    body.resize(at + n);
    try {
      (void)cipher_.decrypt_to(ciphertext, len, body.data() + at);
    } catch (const ProtocolError&) {
      body.resize(at);
      throw;
    }
    remaining_ -= n;
  } else {
    const std::size_t n = cipher_.decrypt_to(ciphertext, len, plain_);
    if (n < kFrameHeaderLen) {
      throw ProtocolError(ErrorCode::malformed, "transport message too short for a message header");
    }
    const std::uint8_t cls = plain_[0];
    if (cls > static_cast<std::uint8_t>(MessageClass::verdict)) {
      throw ProtocolError(ErrorCode::malformed, "unknown message class " + std::to_string(cls));
    }
    const std::uint32_t size = std::uint32_t{plain_[1]} << 24 | std::uint32_t{plain_[2]} << 16 |
                               std::uint32_t{plain_[3]} << 8 | std::uint32_t{plain_[4]};
    const std::uint32_t limit = limit_for(static_cast<MessageClass>(cls), limits_);
    if (size > limit) {
      throw ProtocolError(ErrorCode::message_too_large,
                          "peer announced a " + std::to_string(size) + "-byte message; the limit is " +
                              std::to_string(limit));
    }
    const std::size_t avail = n - kFrameHeaderLen;
    if (avail > size) {
      throw ProtocolError(ErrorCode::malformed, "transport message runs past the end of its message");
    }
    current_ = Frame{static_cast<MessageClass>(cls), {}};
    // Grow with what actually arrives: a peer that announces a large message and stalls costs
    // us at most kBodyInitialReserve bytes.
    current_.body.reserve(std::min<std::size_t>(size, kBodyInitialReserve));
    current_.body.assign(plain_ + kFrameHeaderLen, plain_ + n);
    remaining_ = size - avail;
    in_message_ = true;
  }
  if (remaining_ == 0) {
    in_message_ = false;
    ready_.push_back(std::move(current_));
    current_ = Frame{};
  }
}

void FrameOpener::feed(ByteView wire) {
  const std::uint8_t* p = wire.data();
  std::size_t n = wire.size();
  while (n > 0) {
    if (pending_len_ > 0 || n < 2) {
      // Assemble a transport message across feeds.
      if (pending_len_ < 2) {
        const std::size_t take = std::min(n, 2 - pending_len_);
        std::memcpy(pending_ + pending_len_, p, take);
        pending_len_ += take;
        p += take;
        n -= take;
        if (pending_len_ < 2) return;
      }
      const std::size_t len = std::size_t{pending_[0]} << 8 | pending_[1];
      if (len < noise::kTagLen) {
        throw ProtocolError(ErrorCode::malformed, "transport message shorter than its tag");
      }
      const std::size_t take = std::min(n, 2 + len - pending_len_);
      std::memcpy(pending_ + pending_len_, p, take);
      pending_len_ += take;
      p += take;
      n -= take;
      if (pending_len_ < 2 + len) return;
      pending_len_ = 0;
      open_transport(pending_ + 2, len);
      continue;
    }
    const std::size_t len = std::size_t{p[0]} << 8 | p[1];
    if (len < noise::kTagLen) {
      throw ProtocolError(ErrorCode::malformed, "transport message shorter than its tag");
    }
    if (n < 2 + len) {
      std::memcpy(pending_, p, n);
      pending_len_ = n;
      return;
    }
    open_transport(p + 2, len);
    p += 2 + len;
    n -= 2 + len;
  }
}

std::optional<Frame> FrameOpener::pop() {
  if (ready_.empty()) return std::nullopt;
  Frame f = std::move(ready_.front());
  ready_.pop_front();
  return f;
}

}  // namespace cohort::protocol
