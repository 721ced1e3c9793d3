// FrameSealer/FrameOpener without sockets: every split of the wire bytes yields the original
// messages; tampering, replay, reordering, truncation and lying length prefixes are caught before
// any large allocation.
#include <gtest/gtest.h>

#include <random>

#include "protocol/error.h"
#include "protocol/framing.h"

#include "tests/protocol/alloc_probe.h"

namespace cohort::protocol {
namespace {

noise::Key test_key(std::uint8_t seed) {
  noise::Key k;
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(seed + i);
  return k;
}

// One transport message (u16 length || ciphertext) carrying `plaintext`, sealed by `c`.
Bytes record(noise::CipherState& c, const Bytes& plaintext) {
  Bytes ct;
  c.encrypt_with_ad({}, plaintext, ct);
  Bytes out(2 + ct.size());
  out[0] = static_cast<std::uint8_t>(ct.size() >> 8);
  out[1] = static_cast<std::uint8_t>(ct.size());
  std::copy(ct.begin(), ct.end(), out.begin() + 2);
  return out;
}

Bytes header(MessageClass cls, std::uint32_t n) {
  return {static_cast<std::uint8_t>(cls), static_cast<std::uint8_t>(n >> 24),
          static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8),
          static_cast<std::uint8_t>(n)};
}

// Splits sealed wire bytes into their transport records.
std::vector<Bytes> records(const Bytes& wire) {
  std::vector<Bytes> out;
  for (std::size_t pos = 0; pos < wire.size();) {
    const std::size_t len = std::size_t{wire[pos]} << 8 | wire[pos + 1];
    out.emplace_back(wire.begin() + pos, wire.begin() + pos + 2 + len);
    pos += 2 + len;
  }
  return out;
}

Bytes concat(const std::vector<Bytes>& parts) {
  Bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

ErrorCode error_of(FrameOpener& opener, const Bytes& wire) {
  try {
    opener.feed(wire);
  } catch (const ProtocolError& e) {
    return e.code();
  }
  ADD_FAILURE() << "no error";
  return ErrorCode::io;
}

Bytes pattern_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<std::uint8_t>(rng());
  return b;
}

TEST(Framing, RoundTripsMessagesOfEverySizeInAnySplit) {
  ChannelLimits limits;
  limits.max_control_bytes = 8 << 20;
  FrameSealer sealer(noise::CipherState(test_key(1)), limits.rekey_interval);
  FrameOpener opener(noise::CipherState(test_key(1)), limits);
  const std::size_t first = kMaxTransportPlaintext - kFrameHeaderLen;
  const std::vector<std::size_t> sizes = {0, 1, 100, first - 1, first, first + 1,
                                          kMaxTransportPlaintext, 200'000, 3 << 20};
  std::mt19937 rng(42);
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const Bytes body = pattern_bytes(sizes[i], static_cast<std::uint32_t>(i));
    const MessageClass cls = i % 2 ? MessageClass::bulk : MessageClass::control;
    Bytes wire;
    sealer.seal(cls, body, wire);
    // Feed in random pieces, single bytes for the small messages.
    for (std::size_t pos = 0; pos < wire.size();) {
      const std::size_t n = std::min<std::size_t>(wire.size() - pos, sizes[i] < 1000 ? 1 : 1 + rng() % 70'000);
      opener.feed(ByteView(wire.data() + pos, n));
      pos += n;
    }
    auto frame = opener.pop();
    ASSERT_TRUE(frame.has_value()) << "size " << sizes[i];
    EXPECT_EQ(frame->cls, cls);
    EXPECT_EQ(frame->body, body) << "size " << sizes[i];
    EXPECT_FALSE(opener.pop().has_value());
    EXPECT_FALSE(opener.mid_message());
  }
}

TEST(Framing, SplitsLargeMessagesIntoMaximalTransportMessages) {
  FrameSealer sealer(noise::CipherState(test_key(1)), 1 << 20);
  Bytes wire;
  sealer.seal(MessageClass::bulk, Bytes(1 << 20), wire);
  const auto recs = records(wire);
  const std::size_t total = (1 << 20) + kFrameHeaderLen;
  ASSERT_EQ(recs.size(), (total + kMaxTransportPlaintext - 1) / kMaxTransportPlaintext);
  for (std::size_t i = 0; i + 1 < recs.size(); ++i) EXPECT_EQ(recs[i].size(), 2 + noise::kMaxMessageLen);
  EXPECT_EQ(wire.size(), total + recs.size() * (2 + noise::kTagLen));
}

TEST(Framing, OpenerRejectsTamperedTransportMessage) {
  FrameSealer sealer(noise::CipherState(test_key(1)), 1 << 20);
  Bytes wire;
  sealer.seal(MessageClass::control, Bytes(1000, 7), wire);
  for (std::size_t byte : {std::size_t{2}, std::size_t{500}, wire.size() - 1}) {
    FrameOpener opener(noise::CipherState(test_key(1)), {});
    Bytes bad = wire;
    bad[byte] ^= 0x10;
    EXPECT_EQ(error_of(opener, bad), ErrorCode::authentication_failed) << "byte " << byte;
    EXPECT_FALSE(opener.pop().has_value()) << "a forged frame must never reach a handler";
  }
}

TEST(Framing, OpenerRejectsReplayedAndReorderedTransportMessages) {
  FrameSealer sealer(noise::CipherState(test_key(1)), 1 << 20);
  Bytes wire;
  sealer.seal(MessageClass::control, Bytes(10, 1), wire);
  sealer.seal(MessageClass::control, Bytes(10, 2), wire);
  const auto recs = records(wire);
  ASSERT_EQ(recs.size(), 2u);
  {
    FrameOpener opener(noise::CipherState(test_key(1)), {});
    opener.feed(recs[0]);
    ASSERT_TRUE(opener.pop().has_value());
    EXPECT_EQ(error_of(opener, recs[0]), ErrorCode::authentication_failed);  // replay
  }
  {
    FrameOpener opener(noise::CipherState(test_key(1)), {});
    EXPECT_EQ(error_of(opener, concat({recs[1], recs[0]})), ErrorCode::authentication_failed);
    EXPECT_FALSE(opener.pop().has_value());
  }
}

TEST(Framing, TruncatedMessageIsNeverDelivered) {
  FrameSealer sealer(noise::CipherState(test_key(1)), 1 << 20);
  Bytes wire;
  sealer.seal(MessageClass::bulk, Bytes(200'000, 3), wire);
  auto recs = records(wire);
  recs.pop_back();  // drop the last transport message
  FrameOpener opener(noise::CipherState(test_key(1)), {});
  opener.feed(concat(recs));
  EXPECT_FALSE(opener.pop().has_value());
  EXPECT_TRUE(opener.mid_message());
  // A prefix of a transport message is not delivered either.
  FrameOpener opener2(noise::CipherState(test_key(1)), {});
  opener2.feed(ByteView(wire.data(), 100));
  EXPECT_FALSE(opener2.pop().has_value());
  EXPECT_TRUE(opener2.mid_message());
}

TEST(Framing, OversizedLengthPrefixIsRejectedBeforeAllocation) {
  ChannelLimits limits;  // 64 MiB bulk, 256 KiB control
  for (auto [cls, claimed] : {std::pair{MessageClass::bulk, std::uint32_t{1} << 30},
                              std::pair{MessageClass::bulk, limits.max_bulk_bytes + 1},
                              std::pair{MessageClass::control, limits.max_control_bytes + 1},
                              std::pair{MessageClass::verdict, std::uint32_t{4096}}}) {
    noise::CipherState peer(test_key(9));
    const Bytes wire = record(peer, header(cls, claimed));
    FrameOpener opener(noise::CipherState(test_key(9)), limits);
    AllocationProbe probe;
    EXPECT_EQ(error_of(opener, wire), ErrorCode::message_too_large) << claimed;
    EXPECT_LT(probe.max(), std::size_t{4096}) << "allocated " << probe.max() << " bytes for a rejected message";
  }
}

TEST(Framing, AnnouncedButUnsentBytesAreNotAllocated) {
  // A peer announcing 4 MiB (the limit, four times the initial reservation) and sending 100 bytes
  // costs at most the initial reservation, not the announced size.
  noise::CipherState peer(test_key(9));
  Bytes plain = header(MessageClass::bulk, ChannelLimits{}.max_bulk_bytes);
  plain.resize(plain.size() + 100, 0xab);
  const Bytes wire = record(peer, plain);
  FrameOpener opener(noise::CipherState(test_key(9)), {});
  AllocationProbe probe;
  opener.feed(wire);
  EXPECT_LE(probe.max(), kBodyInitialReserve);
  EXPECT_TRUE(opener.mid_message());
}

TEST(Framing, MalformedPlaintextIsRejected) {
  struct Case {
    const char* what;
    std::vector<Bytes> plaintexts;
  };
  Bytes two_messages = header(MessageClass::control, 1);
  two_messages.push_back(0);
  const Bytes h2 = header(MessageClass::control, 0);
  two_messages.insert(two_messages.end(), h2.begin(), h2.end());
  const std::vector<Case> cases = {
      {"short header", {Bytes{0, 0, 0}}},
      {"unknown class", {Bytes{7, 0, 0, 0, 1, 0}}},
      {"two messages in one transport message", {two_messages}},
      {"empty continuation", {header(MessageClass::control, 10), Bytes{}}},
  };
  for (const auto& c : cases) {
    noise::CipherState peer(test_key(5));
    Bytes wire;
    for (const auto& p : c.plaintexts) {
      const Bytes r = record(peer, p);
      wire.insert(wire.end(), r.begin(), r.end());
    }
    FrameOpener opener(noise::CipherState(test_key(5)), {});
    EXPECT_EQ(error_of(opener, wire), ErrorCode::malformed) << c.what;
  }
  // A length prefix below the tag size is malformed whatever follows.
  FrameOpener opener(noise::CipherState(test_key(5)), {});
  EXPECT_EQ(error_of(opener, Bytes{0, 15}), ErrorCode::malformed);
}

TEST(Framing, BothSidesRekeyAtTheSameTransportMessage) {
  ChannelLimits limits;
  limits.rekey_interval = 3;
  FrameSealer sealer(noise::CipherState(test_key(2)), limits.rekey_interval);
  FrameOpener opener(noise::CipherState(test_key(2)), limits);
  for (int i = 0; i < 20; ++i) {
    Bytes wire;
    const Bytes body = pattern_bytes(i * 10'000, i);
    sealer.seal(MessageClass::bulk, body, wire);
    opener.feed(wire);
    auto f = opener.pop();
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->body, body);
  }
  // The key really changes: an opener that rekeys later fails at the first rekeyed message.
  FrameSealer s3(noise::CipherState(test_key(2)), 3);
  ChannelLimits later = limits;
  later.rekey_interval = 4;
  FrameOpener o4(noise::CipherState(test_key(2)), later);
  Bytes wire;
  for (int i = 0; i < 3; ++i) s3.seal(MessageClass::control, Bytes{1}, wire);
  o4.feed(wire);
  wire.clear();
  s3.seal(MessageClass::control, Bytes{1}, wire);
  EXPECT_EQ(error_of(o4, wire), ErrorCode::authentication_failed);
}

}  // namespace
}  // namespace cohort::protocol
