// The top-k codec (exchange/topk_codec.h) against closed forms and a reference selection: which
// entries are kept (the ceil(n / 48) largest magnitudes, lower position on a tie), what they
// decode to (exact on the codebook; otherwise within half a codebook step), the size to the
// byte, and a refusal for every rule of the format a payload can break.
#include "exchange/topk_codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "common/check.h"

namespace cohort::exchange::topk {
namespace {

std::vector<float> normal(size_t n, uint32_t seed, float sd = 1e-3f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<float> decoded(const std::string& payload, size_t n) {
  std::vector<float> out(n, 42.0f);
  const auto err = decode(payload, out);
  EXPECT_FALSE(err) << *err;
  return out;
}

TEST(TopkCodec, KeepsTheLargestMagnitudesOfEveryChunk) {
  const size_t n = 3 * kChunk + 1000;  // three full chunks and a short one
  const auto v = normal(n, 1);
  const auto out = decoded(encode(v), n);
  for (size_t begin = 0; begin < n; begin += kChunk) {
    const size_t len = std::min(kChunk, n - begin);
    std::vector<size_t> order(len);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return std::fabs(v[begin + a]) > std::fabs(v[begin + b]);
    });
    const size_t k = (len + 47) / 48;
    std::vector<bool> expect(len, false);
    for (size_t j = 0; j < k; ++j) expect[order[j]] = true;
    for (size_t i = 0; i < len; ++i) {
      ASSERT_EQ(out[begin + i] != 0.0f, expect[i]) << "chunk at " << begin << ", position " << i;
      if (expect[i]) {
        EXPECT_EQ(std::signbit(out[begin + i]), std::signbit(v[begin + i]));
      }
    }
  }
}

TEST(TopkCodec, ValuesOnTheCodebookDecodeExactly) {
  // Kept magnitudes 1 .. 128 make the geometric codebook exactly the powers of two.
  std::vector<float> v(kChunk, 0.0f);
  for (int m = 0; m < 8; ++m) {
    v[static_cast<size_t>(100 + 7 * m)] = std::ldexp(1.0f, m);
    v[static_cast<size_t>(1000 + 3 * m)] = -std::ldexp(1.0f, m);
  }
  EXPECT_EQ(decoded(encode(v), kChunk), v);
}

TEST(TopkCodec, OtherValuesWithinHalfACodebookStep) {
  const auto v = normal(kChunk, 2);
  const std::string p = encode(v);
  const auto out = decoded(p, kChunk);
  // The codebook is in the payload: levels after the 2-byte count, BF16 little-endian.
  std::vector<float> level(kLevels);
  for (size_t m = 0; m < kLevels; ++m) {
    uint32_t bits = uint32_t(uint8_t(p[2 + 2 * m])) << 16 | uint32_t(uint8_t(p[3 + 2 * m])) << 24;
    std::memcpy(&level[m], &bits, 4);
  }
  for (size_t i = 0; i < kChunk; ++i) {
    if (out[i] == 0) continue;
    const float a = std::fabs(v[i]);
    // The nearest level: no level is closer than the one chosen.
    for (float l : level)
      EXPECT_LE(std::fabs(std::fabs(out[i]) - a), std::fabs(l - a) * (1 + 1e-6f));
    // Geometric levels from the smallest to the largest kept magnitude (BF16-rounded: 2^-8).
    const float lo = level.front(), hi = level.back();
    EXPECT_LE(std::fabs(std::fabs(out[i]) - a),
              a * (std::pow(hi / lo, 1.0f / 7) - 1) / 2 + a / 128);
  }
}

TEST(TopkCodec, SizeToTheByte) {
  EXPECT_EQ(chunk_bytes(86), 2u + 16u + 129u + 43u);  // ceil(4096 / 48) = 86 kept
  EXPECT_EQ(encode(normal(kChunk, 3)).size(), 190u);
  const size_t n = 10 * kChunk + 65;  // a short chunk of 65 keeps 2
  EXPECT_EQ(encode(normal(n, 4)).size(), 10 * 190u + chunk_bytes(2));
  EXPECT_EQ(max_payload_bytes(n), 10 * 190u + chunk_bytes(2));
  const double per_param = double(encode(normal(1 << 20, 5)).size()) / (1 << 20);
  EXPECT_LE(per_param, 0.0465);  // the target is 0.05; FP8 is 1.04
}

TEST(TopkCodec, SparseAndZeroChunksKeepOnlyNonZeros) {
  std::vector<float> v(2 * kChunk, 0.0f);
  v[5] = 0.5f;
  v[4095] = -2.0f;
  const std::string p = encode(v);
  EXPECT_EQ(p.size(), chunk_bytes(2) + chunk_bytes(0));
  const auto out = decoded(p, v.size());
  EXPECT_EQ(out[5], 0.5f);
  EXPECT_EQ(out[4095], -2.0f);
  EXPECT_EQ(std::count(out.begin(), out.end(), 0.0f), static_cast<long>(v.size() - 2));
}

TEST(TopkCodec, TiesGoToTheLowerPosition) {
  const std::vector<float> v(kChunk, 0.25f);
  const auto out = decoded(encode(v), kChunk);
  for (size_t i = 0; i < kChunk; ++i) EXPECT_EQ(out[i], i < 86 ? 0.25f : 0.0f) << i;
}

TEST(TopkCodec, EncoderRefusesNonFiniteValues) {
  auto v = normal(100, 6);
  v[7] = NAN;
  EXPECT_THROW((void)encode(v), Error);
  v[7] = INFINITY;
  EXPECT_THROW((void)encode(v), Error);
}

// One payload per broken rule; each must be refused with a sentence.
TEST(TopkCodec, DecoderRefusesEveryBrokenRule) {
  const size_t n = kChunk + 100;  // a full chunk (86 kept) and one of 100 (3 kept)
  const std::string good = encode(normal(n, 7));
  std::vector<float> out(n);
  ASSERT_FALSE(decode(good, out));
  auto refused = [&](std::string p, const char* what) {
    const auto err = decode(p, out);
    EXPECT_TRUE(err) << what;
  };
  const size_t second = chunk_bytes(86);  // where the short chunk starts
  const size_t idx = 2 + 16;
  {
    std::string p = good;
    p[second] = 4;  // keeps 4 of 100: at most 3
    refused(p, "count over ceil(n / 48)");
  }
  refused(good.substr(0, good.size() - 1), "truncated");
  refused(good.substr(0, 1), "truncated before the count");
  refused(good + std::string(1, '\0'), "trailing byte");
  {
    std::string p = good;
    p[3] = static_cast<char>(p[3] | 0x80);  // level 0 negative
    refused(p, "negative level");
  }
  {
    std::string p = good;
    p[2 + 2 * 7] = static_cast<char>(0x80);
    p[3 + 2 * 7] = 0x7f;  // level 7 = 0x7f80: Inf
    refused(p, "Inf level");
  }
  {
    std::string p = good;
    std::swap(p[2], p[2 + 2 * 7]);
    std::swap(p[3], p[3 + 2 * 7]);  // level 0 the largest: decreasing
    refused(p, "decreasing levels");
  }
  {
    std::string p = good;
    p[idx] = p[idx + 1] = 0;  // first position 0 ...
    p[idx + 2] = 0;           // ... and the second too (bits 12..23): not increasing
    refused(p, "positions not increasing");
  }
  {
    // The short chunk: 3 positions in 5 bytes; make the second one 4095 >= 100.
    std::string p = good;
    const size_t at = second + 2 + 16;
    p[at + 1] = static_cast<char>((p[at + 1] & 0x0f) | 0xf0);
    p[at + 2] = static_cast<char>(0xff);
    refused(p, "position past the chunk's end");
  }
  {
    // One kept entry: 12 bits of position in 2 bytes, the top 4 bits are padding.
    std::vector<float> one(100, 0.0f);
    one[9] = 1.0f;
    std::string p = encode(one);
    ASSERT_FALSE(decode(p, std::span<float>(out.data(), 100)));
    p[2 + 16 + 1] = static_cast<char>(p[2 + 16 + 1] | 0x10);
    EXPECT_TRUE(decode(p, std::span<float>(out.data(), 100))) << "padding bits";
    p = encode(one);
    p[2 + 16 + 2] = static_cast<char>(p[2 + 16 + 2] | 0x20);  // odd count: high nibble is padding
    EXPECT_TRUE(decode(p, std::span<float>(out.data(), 100))) << "padding nibble";
  }
}

// Whatever bytes arrive, the decoder either refuses them or writes only finite values.
TEST(TopkCodec, RandomBytesNeverDecodeToNonFiniteValues) {
  std::mt19937 rng(8);
  const std::string good = encode(normal(kChunk + 100, 9));
  std::vector<float> out(kChunk + 100);
  int accepted = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::string p = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) p[rng() % p.size()] ^= static_cast<char>(1 + rng() % 255);
    if (!decode(p, out)) {
      ++accepted;
      for (float x : out) ASSERT_TRUE(std::isfinite(x));
    }
  }
  EXPECT_GT(accepted, 0);  // flips inside the codes are valid payloads
}

}  // namespace
}  // namespace cohort::exchange::topk
