// Weight sync (node/weight_sync.h) against an in-memory coordinator: a signed manifest and tensor
// chunks served from memory, as docs/PROTOCOL.md says the coordinator serves them. Only changed
// tensors are fetched; a manifest by another key, bytes that do not match their signed digest and
// chunks out of order are refused before anything is loaded.
#include "node/weight_sync.h"

#include <gtest/gtest.h>

#include <deque>
#include <functional>
#include <map>

#include "exchange/manifest.h"
#include "protocol/signed_update.h"

namespace cohort::node {
namespace {

exchange::ParamLayout layout() {
  exchange::ParamLayout l;
  l.slots.push_back({"w1", {2, 3}, 0, 6});
  l.slots.push_back({"w2", {3000000}, 6, 3000000});  // 12 MB: several 1 MiB chunks
  l.slots.push_back({"b", {4}, 3000006, 4});
  l.total = 3000010;
  return l;
}

// A coordinator in memory: answers what WeightSync sends, the way the real one does.
class MemoryCoordinator final : public CoordinatorLink {
 public:
  MemoryCoordinator(const protocol::Identity& key, const exchange::ParamLayout& l)
      : key_(key), layout_(l) {}

  void publish(uint64_t version, const std::vector<std::vector<float>>& values) {
    std::vector<exchange::NamedBytes> named;
    for (size_t i = 0; i < layout_.slots.size(); ++i) {
      bytes_.push_back(
          std::string(reinterpret_cast<const char*>(values[i].data()), values[i].size() * 4));
      named.push_back({layout_.slots[i].name, layout_.slots[i].shape, bytes_.back()});
    }
    std::vector<protocol::Digest> digests;
    manifest_ =
        protocol::sign_manifest(exchange::build_manifest("r", version, 0, named, &digests), key_);
    for (size_t i = 0; i < digests.size(); ++i)
      by_digest_[std::string(digests[i].begin(), digests[i].end())] =
          bytes_[bytes_.size() - digests.size() + i];
  }

  asio::awaitable<uint64_t> send(wire::Envelope e) override {
    if (e.has_manifest_request()) {
      wire::Envelope r;
      *r.mutable_manifest() = manifest_;
      inbox_.push_back(r);
    } else if (e.has_tensor_request()) {
      for (const auto& d : e.tensor_request().blake2b()) {
        requested.push_back(d);
        const std::string& b = by_digest_.at(d);
        for (size_t off = 0; off < b.size() || off == 0; off += 1 << 20) {
          wire::Envelope c;
          auto* ch = c.mutable_tensor_chunk();
          ch->set_blake2b(d);
          ch->set_offset(off);
          ch->set_total_bytes(b.size());
          ch->set_data(b.substr(off, 1 << 20));
          inbox_.push_back(c);
          if (b.empty()) break;
        }
      }
      if (tamper) tamper(inbox_);
    }
    co_return ++id_;
  }
  asio::awaitable<wire::Envelope> receive() override {
    if (inbox_.empty()) throw Error("nothing to receive");
    wire::Envelope e = std::move(inbox_.front());
    inbox_.pop_front();
    co_return e;
  }

  std::vector<std::string> requested;  // digests asked for, in order
  std::function<void(std::deque<wire::Envelope>&)> tamper;

 private:
  const protocol::Identity& key_;
  const exchange::ParamLayout& layout_;
  wire::SignedManifest manifest_;
  std::deque<std::string> bytes_;
  std::map<std::string, std::string> by_digest_;
  std::deque<wire::Envelope> inbox_;
  uint64_t id_ = 0;
};

std::vector<std::vector<float>> values(const exchange::ParamLayout& l, float base) {
  std::vector<std::vector<float>> v;
  for (const auto& s : l.slots) {
    v.emplace_back(s.numel);
    for (size_t i = 0; i < s.numel; ++i)
      v.back()[i] = base + float(i % 97) * 0.01f + float(s.offset);
  }
  return v;
}

template <typename T>
T run(asio::awaitable<T> a) {
  asio::io_context io;
  std::optional<T> out;
  std::exception_ptr err;
  asio::co_spawn(io, std::move(a), [&](std::exception_ptr e, T v) {
    err = e;
    if (!e) out = std::move(v);
  });
  io.run();
  if (err) std::rethrow_exception(err);
  return std::move(*out);
}

class WeightSyncTest : public ::testing::Test {
 protected:
  protocol::Identity coordinator = protocol::Identity::generate();
  exchange::ParamLayout l = layout();
  MemoryCoordinator link{coordinator, l};
  std::map<std::string, std::vector<float>> replica;
  void load(WeightSync& sync, const StagedWeights& w) {
    sync.load(w, [&](const std::string& name, const std::vector<float>& v) { replica[name] = v; });
  }
};

TEST_F(WeightSyncTest, FetchesEverythingFirstThenOnlyChangedTensors) {
  WeightSync sync(l, coordinator.id(), "r");
  auto v1 = values(l, 1.0f);
  link.publish(1, v1);
  const StagedWeights w1 = run(sync.fetch(link, 1));
  EXPECT_EQ(link.requested.size(), 3u);
  EXPECT_TRUE(replica.empty());  // staged, not loaded
  load(sync, w1);
  EXPECT_TRUE(sync.holds(1));
  EXPECT_EQ(replica.at("w2"), v1[1]);
  // Version 2 changes only the bias.
  auto v2 = v1;
  v2[2][0] += 1.0f;
  link.publish(2, v2);
  link.requested.clear();
  const StagedWeights w2 = run(sync.fetch(link, 2));
  ASSERT_EQ(link.requested.size(), 1u);
  ASSERT_EQ(w2.tensors.size(), 1u);
  EXPECT_EQ(w2.tensors[0].names, std::vector<std::string>{"b"});
  load(sync, w2);
  EXPECT_EQ(replica.at("b"), v2[2]);
  EXPECT_EQ(sync.version(), 2u);
  EXPECT_DOUBLE_EQ(sync.fetched_bytes(), double(l.total * 4 + 16));
}

TEST_F(WeightSyncTest, BytesThatDoNotMatchTheSignedDigestAreRefused) {
  WeightSync sync(l, coordinator.id(), "r");
  link.publish(1, values(l, 1.0f));
  link.tamper = [](std::deque<wire::Envelope>& in) {
    (*in[3].mutable_tensor_chunk()->mutable_data())[100] ^= 1;
  };
  try {
    (void)run(sync.fetch(link, 1));
    FAIL() << "tampered bytes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not match its signed digest"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(sync.holds(1));
}

TEST_F(WeightSyncTest, ChunksOutOfOrderAreRefused) {
  WeightSync sync(l, coordinator.id(), "r");
  link.publish(1, values(l, 1.0f));
  link.tamper = [](std::deque<wire::Envelope>& in) { std::swap(in[2], in[3]); };
  EXPECT_THROW((void)run(sync.fetch(link, 1)), Error);
}

TEST_F(WeightSyncTest, ManifestSignedByAnotherKeyIsRefused) {
  const protocol::Identity mallory = protocol::Identity::generate();
  WeightSync sync(l, mallory.id(), "r");  // the node pinned another key
  link.publish(1, values(l, 1.0f));
  EXPECT_ANY_THROW((void)run(sync.fetch(link, 1)));
  EXPECT_TRUE(link.requested.empty());  // no tensor was asked for
}

TEST_F(WeightSyncTest, ManifestThatDoesNotFitTheModelIsRefused) {
  exchange::ParamLayout other = l;
  other.slots[2].shape = {2, 2};
  WeightSync sync(other, coordinator.id(), "r");
  link.publish(1, values(l, 1.0f));
  EXPECT_THROW((void)run(sync.fetch(link, 1)), Error);
  EXPECT_TRUE(link.requested.empty());
}

}  // namespace
}  // namespace cohort::node
