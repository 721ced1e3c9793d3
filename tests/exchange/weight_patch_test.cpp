// Weight patches (exchange/weight_patch.h): applying a patch reproduces the target bytes bit for
// bit (F32 and BF16), the encoder writes exactly the body docs/PROTOCOL.md specifies (a vector
// written out by hand from the spec), and every broken rule is refused with `held` untouched.
#include "exchange/weight_patch.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <random>

#include "common/check.h"

namespace cohort::exchange {
namespace {

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// `target` = `base` with `changes` random elements given new random bits.
std::string changed(const std::string& base, size_t e, size_t changes, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string t = base;
  const size_t numel = base.size() / e;
  for (size_t k = 0; k < changes; ++k) {
    const size_t i = rng() % numel;
    t[i * e] = static_cast<char>(t[i * e] ^ (1 + rng() % 255));  // always a different element
  }
  return t;
}

std::string zstd(const std::string& body) {
  std::string out(ZSTD_compressBound(body.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), body.data(), body.size(), 3));
  return out;
}

std::string unzstd(const std::string& frame) {
  std::string body(ZSTD_getFrameContentSize(frame.data(), frame.size()), '\0');
  body.resize(ZSTD_decompress(body.data(), body.size(), frame.data(), frame.size()));
  return body;
}

TEST(WeightPatch, ApplyingReproducesTheTargetBitForBit) {
  for (uint32_t e : {4u, 2u}) {
    const std::string a0 = random_bytes(40000 * e, 1), b0 = random_bytes(37 * e, 2);
    const std::string a1 = changed(a0, e, 400, 3);  // ~1 % of the first tensor
    const std::vector<TensorChange> t = {{"model.a.weight", e, a0, a1},
                                         {"model.b.bias", e, b0, b0}};
    PatchStats st;
    const std::string p = encode_patch(3, 4, t, &st);
    EXPECT_EQ(st.elements, 40037u);
    EXPECT_GT(st.changed, 390u);
    EXPECT_LE(st.changed, 400u);
    EXPECT_LT(p.size(), a0.size() / 10) << "a 1 % patch is a small share of the snapshot";
    std::map<std::string, std::string> held = {{"model.a.weight", a0}, {"model.b.bias", b0}};
    const auto err = apply_patch(p, 3, held, 1 << 24);
    ASSERT_FALSE(err) << *err;
    EXPECT_EQ(held["model.a.weight"], a1);
    EXPECT_EQ(held["model.b.bias"], b0);
    EXPECT_EQ(patch_versions(p, 1 << 24), std::make_pair(uint64_t{3}, uint64_t{4}));
  }
}

// The body of docs/PROTOCOL.md's example, byte by byte from the spec: versions 7 → 8, tensor
// "w" of 5 BF16 elements, elements 1 and 4 changed to 0xAAAA and 0xBBBB.
const std::string kVectorBody = std::string("CWP1") +
                                std::string("\x07\0\0\0\0\0\0\0", 8) +  // from 7
                                std::string("\x08\0\0\0\0\0\0\0", 8) +  // to 8
                                std::string("\x01\0\0\0", 4) +          // 1 tensor
                                std::string("\x01\0", 2) + "w" +        // name
                                std::string("\x02", 1) +                // 2-byte elements
                                std::string("\x05\0\0\0\0\0\0\0", 8) +  // 5 elements
                                std::string("\x02\0\0\0\0\0\0\0", 8) +  // 2 changed
                                std::string("\x01\x02", 2) +            // position 1, gap 2 -> 4
                                std::string("\xaa\xaa\xbb\xbb", 4);     // new values

TEST(WeightPatch, TheSpecsVectorDecodesAndTheEncoderWritesIt) {
  std::map<std::string, std::string> held = {{"w", std::string(10, '\0')}};
  ASSERT_FALSE(apply_patch(zstd(kVectorBody), 7, held, 1 << 20));
  EXPECT_EQ(held["w"], std::string("\0\0\xaa\xaa\0\0\0\0\xbb\xbb", 10));
  const std::string before(10, '\0'), after = held["w"];
  const std::vector<TensorChange> t = {{"w", 2, before, after}};
  EXPECT_EQ(unzstd(encode_patch(7, 8, t)), kVectorBody);
}

TEST(WeightPatch, EveryBrokenRuleIsRefusedAndNothingIsWritten) {
  const std::map<std::string, std::string> fresh = {{"w", std::string(10, '\0')}};
  auto refused = [&](const std::string& patch, uint64_t from, const char* what,
                     uint64_t max = 1 << 20) {
    std::map<std::string, std::string> held = fresh;
    const auto err = apply_patch(patch, from, held, max);
    EXPECT_TRUE(err) << what;
    EXPECT_EQ(held, fresh) << what;
  };
  auto body = [](size_t at, std::string_view bytes) {
    std::string b = kVectorBody;
    b.replace(at, bytes.size(), bytes);
    return b;
  };
  const size_t name = 4 + 8 + 8 + 4;  // offset of the first tensor's name length
  refused(zstd(kVectorBody), 6, "from another version");
  refused("not zstd at all", 7, "not a zstd frame");
  refused(zstd(kVectorBody), 7, "body over the caller's bound", 10);
  refused(zstd(body(0, "CWP2")), 7, "magic");
  refused(zstd(body(12, std::string("\x07", 1))), 7, "target not after source");
  refused(zstd(body(name + 2, "v")), 7, "unknown tensor");
  refused(zstd(body(name + 3, std::string("\x04", 1))), 7, "element size disagrees");
  refused(zstd(body(name + 4, std::string("\x06", 1))), 7, "element count disagrees");
  refused(zstd(body(name + 12, std::string("\x06", 1))), 7, "more changed than elements");
  refused(zstd(body(name + 12, std::string("\x00", 1))), 7, "a listed tensor with no change");
  refused(zstd(body(name + 20, std::string("\x01\x03", 2))), 7, "position past the end");
  refused(zstd(kVectorBody.substr(0, kVectorBody.size() - 1)), 7, "values truncated");
  refused(zstd(kVectorBody + "x"), 7, "trailing byte");
  {
    std::string twice = kVectorBody.substr(name);  // the tensor record, again
    std::string b = kVectorBody + twice;
    b[20] = 2;  // 2 tensors
    refused(zstd(b), 7, "the same tensor twice");
  }
}

TEST(WeightPatch, EncoderRefusesTensorsThatDoNotLineUp) {
  const std::string a(8, 'a'), b(12, 'b');
  const std::vector<TensorChange> t = {{"x", 4, a, b}};
  EXPECT_THROW((void)encode_patch(1, 2, t), Error);
  const std::vector<TensorChange> odd = {{"x", 3, a, a}};
  EXPECT_THROW((void)encode_patch(1, 2, odd), Error);
}

}  // namespace
}  // namespace cohort::exchange
