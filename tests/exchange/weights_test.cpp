// Published weights (exchange/weights.h) and the blob store (exchange/blob_store.h): BF16
// rounding against hand-computed bit patterns, snapshot shards, the manifest checks a node makes
// on blob lists, the patch-or-snapshot choice, and blobs as files named by their digest.
#include "exchange/weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <random>

#include "common/check.h"
#include "exchange/blob_store.h"
#include "exchange/publisher.h"
#include "protocol/bytes.h"

namespace cohort::exchange {
namespace {

uint16_t bf16_of(float f) {
  const std::string b = to_published(wire::DTYPE_BF16, std::span<const float>(&f, 1));
  return static_cast<uint16_t>(static_cast<unsigned char>(b[0]) |
                               static_cast<unsigned char>(b[1]) << 8);
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(PolicyDtype, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_of(1.0f), 0x3F80);
  EXPECT_EQ(bf16_of(-2.0f), 0xC000);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(bf16_of(from_bits(0x3F808000)), 0x3F80);
  // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  EXPECT_EQ(bf16_of(from_bits(0x3F818000)), 0x3F82);
  // Just above halfway rounds up, just below rounds down.
  EXPECT_EQ(bf16_of(from_bits(0x3F808001)), 0x3F81);
  EXPECT_EQ(bf16_of(from_bits(0x3F807FFF)), 0x3F80);
  // The largest finite F32 rounds to infinity, as PyTorch does; infinities and zeros keep sign.
  EXPECT_EQ(bf16_of(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(bf16_of(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(bf16_of(-0.0f), 0x8000);
  // NaN stays NaN (quiet), also a signalling one whose top mantissa bits are zero.
  EXPECT_EQ(bf16_of(from_bits(0x7F800001)), 0x7FC0);
  EXPECT_EQ(bf16_of(from_bits(0xFFC00000)), 0xFFC0);
}

TEST(PolicyDtype, EveryBf16ValueRoundTripsExactly) {
  std::vector<float> all;
  for (uint32_t b = 0; b < 0x10000; ++b)
    if ((b & 0x7F80) != 0x7F80 || (b & 0x7F) == 0) all.push_back(from_bits(b << 16));
  const std::string bytes = to_published(wire::DTYPE_BF16, all);
  ASSERT_EQ(bytes.size(), all.size() * 2);
  std::vector<float> back(all.size());
  from_published(wire::DTYPE_BF16, bytes, back);
  for (size_t i = 0; i < all.size(); ++i)
    ASSERT_EQ(std::memcmp(&all[i], &back[i], 4), 0) << i;
  // F32 is a copy.
  const std::string f32 = to_published(wire::DTYPE_F32, all);
  EXPECT_EQ(std::memcmp(f32.data(), all.data(), f32.size()), 0);
}

TEST(PolicyDtype, NamesAndSizes) {
  EXPECT_EQ(element_bytes(wire::DTYPE_F32), 4u);
  EXPECT_EQ(element_bytes(wire::DTYPE_UNSPECIFIED), 4u);
  EXPECT_EQ(element_bytes(wire::DTYPE_BF16), 2u);
  EXPECT_THROW((void)element_bytes(wire::DTYPE_F8_E4M3), Error);
  EXPECT_EQ(parse_policy_dtype("bf16"), wire::DTYPE_BF16);
  EXPECT_THROW((void)parse_policy_dtype("fp16"), Error);
}

TEST(Snapshot, ShardRangesCoverEveryByteOnce) {
  EXPECT_TRUE(shard_ranges(0, 8).empty());
  const auto r = shard_ranges(20, 8);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0], (std::pair<uint64_t, uint64_t>{0, 8}));
  EXPECT_EQ(r[2], (std::pair<uint64_t, uint64_t>{16, 20}));
  EXPECT_EQ(shard_ranges(16, 8).size(), 2u);
}

// A manifest of two tensors (12 + 8 bytes) in shards of 8, with a chain of patches to v5.
wire::WeightManifest manifest(uint64_t version, std::vector<uint64_t> patch_sizes) {
  wire::WeightManifest m;
  m.set_policy_version(version);
  for (uint64_t n : {12, 8}) m.add_tensors()->set_size_bytes(n);
  m.set_shard_bytes(8);
  for (uint64_t n : {8, 8, 4}) {
    auto* s = m.add_snapshot();
    s->set_blake2b(std::string(32, 's'));
    s->set_size_bytes(n);
  }
  uint64_t to = version;
  for (uint64_t n : patch_sizes) {
    auto* p = m.add_patches();
    p->set_to_version(to);
    p->set_from_version(to - 1);
    p->mutable_blob()->set_blake2b(std::string(32, 'p'));
    p->mutable_blob()->set_size_bytes(n);
    --to;
  }
  return m;
}

TEST(Snapshot, BlobListsAreChecked) {
  EXPECT_EQ(blob_list_mismatch(manifest(5, {3, 4})), std::nullopt);
  auto m = manifest(5, {3});
  m.mutable_snapshot(1)->set_size_bytes(7);
  EXPECT_NE(blob_list_mismatch(m), std::nullopt);
  m = manifest(5, {3});
  m.mutable_snapshot()->RemoveLast();
  EXPECT_NE(blob_list_mismatch(m), std::nullopt);
  m = manifest(5, {3});
  m.set_shard_bytes(0);
  EXPECT_NE(blob_list_mismatch(m), std::nullopt);
  m = manifest(5, {3, 4});
  m.mutable_patches(1)->set_from_version(1);  // a gap in the chain
  EXPECT_NE(blob_list_mismatch(m), std::nullopt);
  m = manifest(5, {3});
  m.mutable_patches(0)->mutable_blob()->set_blake2b("short");
  EXPECT_NE(blob_list_mismatch(m), std::nullopt);
  m = manifest(5, {});
  m.add_mirrors("file:///etc");
  EXPECT_NE(blob_list_mismatch(m), std::nullopt);
  m = manifest(5, {});
  m.add_mirrors("http://127.0.0.1:8080/round");
  EXPECT_EQ(blob_list_mismatch(m), std::nullopt);
}

TEST(Snapshot, PlanTakesPatchesOnlyWhenTheyWeighLess) {
  const auto m = manifest(5, {3, 4, 5, 6});  // snapshot 20 bytes; v4→5: 3, v3→4: 4, ...
  EXPECT_TRUE(plan_fetch(m, 5).nothing);
  // Nothing held, or held too old for the chain: the snapshot.
  EXPECT_TRUE(plan_fetch(m, std::nullopt).patches.empty());
  EXPECT_EQ(plan_fetch(m, std::nullopt).bytes, 20u);
  EXPECT_TRUE(plan_fetch(m, 0).patches.empty());
  // One behind: one patch; three behind: three, oldest first (3 + 4 + 5 = 12 < 20).
  auto p = plan_fetch(m, 4);
  ASSERT_EQ(p.patches.size(), 1u);
  EXPECT_EQ(p.bytes, 3u);
  p = plan_fetch(m, 2);
  ASSERT_EQ(p.patches.size(), 3u);
  EXPECT_EQ(p.patches[0]->from_version(), 2u);
  EXPECT_EQ(p.patches[2]->to_version(), 5u);
  EXPECT_EQ(p.bytes, 12u);
  // Four behind: 18 < 20 still patches; heavier chains lose to the snapshot.
  EXPECT_EQ(plan_fetch(m, 1).patches.size(), 4u);
  EXPECT_TRUE(plan_fetch(manifest(5, {12, 9}), 3).patches.empty());
  // A node ahead of the manifest (an older version asked for) fetches the snapshot.
  EXPECT_TRUE(plan_fetch(m, 7).patches.empty());
}

TEST(BlobStore, BlobsAreFilesNamedByTheirDigest) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("cohort-blobs-" + std::to_string(std::random_device{}()));
  {
    BlobStore store(dir);
    const std::string a(100000, 'a');
    const protocol::Digest d = store.put(a);
    EXPECT_EQ(store.put(a), d);  // idempotent
    const std::string hex = protocol::to_hex(protocol::ByteView(d.data(), d.size()));
    EXPECT_TRUE(std::filesystem::exists(dir / hex));
    EXPECT_EQ(parse_digest_hex(hex), d);
    EXPECT_EQ(parse_digest_hex(hex.substr(1)), std::nullopt);
    EXPECT_EQ(parse_digest_hex(std::string(64, 'G')), std::nullopt);
    EXPECT_EQ(store.size(d), 100000u);
    EXPECT_EQ(store.read(d, 99990, 100), std::string(10, 'a'));
    EXPECT_EQ(store.read(d, 100000, 5), "");
    EXPECT_THROW((void)store.read(d, 100001, 5), Error);
    const protocol::Digest e = store.put("other");
    store.keep_only({e});
    EXPECT_EQ(store.size(d), std::nullopt);
    EXPECT_THROW((void)store.read(d, 0, 1), Error);
    EXPECT_EQ(store.read(e, 0, 100), "other");
  }
  std::filesystem::remove_all(dir);
}

std::string hex(const std::string& raw) {
  return protocol::to_hex(protocol::ByteView(reinterpret_cast<const uint8_t*>(raw.data()), raw.size()));
}

// A round file put pinned stays in the store while versions come and go (versions_served = 1
// removes every earlier version's blobs at each publish).
TEST(Publisher, PinnedRoundFilesOutliveEveryVersion) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("cohort-pin-" + std::to_string(std::random_device{}()));
  auto store = std::make_shared<BlobStore>(dir);
  Publisher pub(store, wire::DTYPE_F32, {{"w", {2}, 2}}, {}, /*versions_served=*/1);
  const protocol::Digest file = pub.put_pinned("{\"question\": \"1+1\", \"answer\": \"2\"}\n");
  const PublishedVersion v1 = pub.publish("r", 1, 0, to_published(wire::DTYPE_F32, std::vector<float>{1.0f, 2.0f}));
  const PublishedVersion v2 = pub.publish("r", 2, 0, to_published(wire::DTYPE_F32, std::vector<float>{3.0f, 4.0f}));
  (void)pub.publish("r", 3, 0, to_published(wire::DTYPE_F32, std::vector<float>{5.0f, 6.0f}));
  EXPECT_FALSE(store->size(v1.shards[0]).has_value());  // versions no longer served are gone
  EXPECT_FALSE(store->size(v2.shards[0]).has_value());
  EXPECT_EQ(store->size(file), 35u);                     // the round file is not
  std::filesystem::remove_all(dir);
}

// buffer() hands back the storage of the version the last publish replaced (no model-sized
// allocation per step), never the current version's bytes: the next patch is diffed against those.
TEST(Publisher, BufferReusesTheReplacedVersionsBytes) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("cohort-buf-" + std::to_string(std::random_device{}()));
  Publisher pub(std::make_shared<BlobStore>(dir), wire::DTYPE_BF16, {{"w", {4096}, 4096}}, {}, 2);
  auto fill = [](std::string& b, float x, int at) {
    std::vector<float> w(4096, 0.25f);
    w[static_cast<size_t>(at)] = x;
    const std::string bytes = to_published(wire::DTYPE_BF16, w);
    ASSERT_EQ(b.size(), bytes.size());
    std::memcpy(b.data(), bytes.data(), b.size());
  };
  std::string b1 = pub.buffer();  // nothing replaced yet: a new buffer of the right size
  ASSERT_EQ(b1.size(), 8192u);
  fill(b1, 0.25f, 0);
  const char* storage1 = b1.data();
  (void)pub.publish("r", 1, 0, std::move(b1));
  std::string b2 = pub.buffer();
  ASSERT_EQ(b2.size(), 8192u);
  EXPECT_NE(b2.data(), pub.current().data());  // not the current version's bytes
  fill(b2, 0.5f, 17);
  const PublishedVersion v2 = pub.publish("r", 2, 0, std::move(b2));
  EXPECT_EQ(v2.patch.changed, 1u);  // diffed against v1's bytes, untouched by buffer()
  std::string b3 = pub.buffer();
  EXPECT_EQ(b3.data(), storage1);  // v1's storage, replaced by v2
  fill(b3, 0.5f, 99);              // v3 differs from v2 at 17 (back to 0.25) and 99
  const PublishedVersion v3 = pub.publish("r", 3, 0, std::move(b3));
  EXPECT_EQ(v3.patch.changed, 2u);
  std::filesystem::remove_all(dir);
}

// The snapshot test vector of docs/PROTOCOL.md ("Snapshots"): tensors a = [1, -2, 0.5] and b = [1]
// in BF16, cut into shards of 4 bytes; then version 2 changes a[2] to -2 and is one patch.
TEST(Publisher, SnapshotTestVectorAndPatchChain) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("cohort-pub-" + std::to_string(std::random_device{}()));
  auto store = std::make_shared<BlobStore>(dir);
  Publisher pub(store, wire::DTYPE_BF16, {{"a", {3}, 3}, {"b", {1}, 1}}, {"http://mirror"}, 2,
                /*shard_bytes=*/4);
  const std::vector<float> v1 = {1.0f, -2.0f, 0.5f, 1.0f};
  const PublishedVersion p1 = pub.publish("r", 1, 0, to_published(wire::DTYPE_BF16, v1));
  const auto& m = p1.manifest;
  ASSERT_EQ(m.tensors_size(), 2);
  EXPECT_EQ(m.tensors(0).dtype(), wire::DTYPE_BF16);
  EXPECT_EQ(hex(m.tensors(0).blake2b()),
            "a651e4360b0f8a8fd54bd2f813a04ffcc619ecc47e901f5b26df29cab5bcba5b");  // 80 3f 00 c0 00 3f
  EXPECT_EQ(hex(m.tensors(1).blake2b()),
            "f966b1d5ca7f12aa3a36714af0d8f9c24f4be9f3be0890eade5f1eb05919e271");  // 80 3f
  EXPECT_EQ(m.shard_bytes(), 4u);
  ASSERT_EQ(m.snapshot_size(), 2);
  EXPECT_EQ(hex(m.snapshot(0).blake2b()),
            "7862c5e116d1d4f57ff9fc6eeb623b8aed9a7fe6850af65abdf21419c55eb365");  // 80 3f 00 c0
  EXPECT_EQ(hex(m.snapshot(1).blake2b()),
            "732502fd559e797fd20bd12abc940d1b098a920f4bff6404d5672dda3437984c");  // 00 3f 80 3f
  EXPECT_EQ(m.snapshot(1).size_bytes(), 4u);
  EXPECT_EQ(m.patches_size(), 0);
  EXPECT_EQ(m.mirrors(0), "http://mirror");
  EXPECT_EQ(blob_list_mismatch(m), std::nullopt);
  EXPECT_EQ(store->read(p1.shards[1], 0, 4), std::string("\x00\x3f\x80\x3f", 4));

  // Big tensors so that a one-element patch weighs less than the snapshot.
  const auto dir2 = dir / "big";
  Publisher big(std::make_shared<BlobStore>(dir2), wire::DTYPE_BF16, {{"w", {4096}, 4096}}, {}, 2);
  std::vector<float> w(4096, 0.25f);
  const PublishedVersion q1 = big.publish("r", 1, 0, to_published(wire::DTYPE_BF16, w));
  w[17] = 0.5f;
  const PublishedVersion q2 = big.publish("r", 2, 0, to_published(wire::DTYPE_BF16, w));
  ASSERT_EQ(q2.manifest.patches_size(), 1);
  EXPECT_TRUE(q2.patch_kept);
  EXPECT_EQ(q2.patch.changed, 1u);
  w[99] = 0.5f;
  const PublishedVersion q3 = big.publish("r", 3, 0, to_published(wire::DTYPE_BF16, w));
  ASSERT_EQ(q3.manifest.patches_size(), 2);  // v2→3, v1→2
  EXPECT_EQ(q3.manifest.patches(1).from_version(), 1u);
  EXPECT_EQ(blob_list_mismatch(q3.manifest), std::nullopt);
  // Applying the chain to v1's bytes gives v3's, bit for bit.
  std::map<std::string, std::string> held = {
      {"w", to_published(wire::DTYPE_BF16, std::vector<float>(4096, 0.25f))}};
  for (int i = 1; i >= 0; --i) {
    protocol::Digest d{};
    std::memcpy(d.data(), q3.manifest.patches(i).blob().blake2b().data(), d.size());
    const std::string patch = big.store()->read(d, 0, 1 << 20);
    EXPECT_EQ(apply_patch(patch, q3.manifest.patches(i).from_version(), held, 1 << 20), std::nullopt);
  }
  EXPECT_EQ(held.at("w"), std::string(big.current()));
  // Only the versions served (2 here) keep their snapshots: v1's shard went when v3 came.
  EXPECT_FALSE(big.store()->size(q1.shards[0]).has_value());
  EXPECT_TRUE(big.store()->size(q2.shards[0]).has_value());
  const PublishedVersion q4 = big.publish("r", 4, 0, to_published(wire::DTYPE_BF16, w));
  EXPECT_EQ(q4.patch.changed, 0u);
  EXPECT_FALSE(big.store()->size(q2.shards[0]).has_value());
  EXPECT_TRUE(big.store()->size(q4.shards[0]).has_value());
  // A jump in versions (a resume) starts a new chain.
  const PublishedVersion q9 = big.publish("r", 9, 0, to_published(wire::DTYPE_BF16, w));
  EXPECT_EQ(q9.manifest.patches_size(), 0);
  EXPECT_THROW((void)big.publish("r", 10, 0, "short"), Error);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace cohort::exchange
