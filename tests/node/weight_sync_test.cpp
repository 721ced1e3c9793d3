// Weight sync (node/weight_sync.h) against an in-memory coordinator that publishes the way the
// real one does (exchange::Publisher: snapshot shards and patches in a blob store on disk,
// docs/PROTOCOL.md "Weights") and serves blobs over a message link. A node fetches the snapshot
// first, then patches; one that skipped versions applies the chain; a joiner takes the snapshot;
// every rebuilt tensor is bit-exact (compared with what was published, and digest-checked by the
// node). Real nginx processes serve the blob folder as mirrors: a node fetches from them, and
// one that corrupts bytes or is down is skipped with the reason in the log.
#include "node/weight_sync.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "common/check.h"
#include "exchange/publisher.h"
#include "exchange/weights.h"
#include "protocol/signed_update.h"

extern char** environ;

namespace cohort::node {
namespace {

namespace fs = std::filesystem;

exchange::ParamLayout layout() {
  exchange::ParamLayout l;
  l.slots.push_back({"w1", {2, 3}, 0, 6});
  l.slots.push_back({"w2", {3000000}, 6, 3000000});  // 12 MB in F32: several shards and chunks
  l.slots.push_back({"b", {4}, 3000006, 4});
  l.total = 3000010;
  return l;
}

fs::path temp_dir(const std::string& what) {
  const fs::path d = fs::temp_directory_path() /
                     ("cohort-" + what + "-" + std::to_string(::getpid()) + "-" +
                      std::to_string(std::random_device{}()));
  fs::create_directories(d);
  return d;
}

// A coordinator in memory: publishes through exchange::Publisher into a blob folder and answers
// what WeightSync sends the way the real one does.
class MemoryCoordinator final : public CoordinatorLink {
 public:
  MemoryCoordinator(const protocol::Identity& key, const exchange::ParamLayout& l,
                    wire::DType dtype, std::vector<std::string> mirrors = {})
      : key_(key), layout_(l), dtype_(dtype), dir_(temp_dir("blobs")) {
    std::vector<exchange::TensorInfo> tensors;
    for (const auto& s : l.slots) tensors.push_back({s.name, s.shape, s.numel});
    store_ = std::make_shared<exchange::BlobStore>(dir_);
    // 1 MiB shards, so a 12 MB tensor spans several and the test sees shard boundaries.
    pub_ = std::make_unique<exchange::Publisher>(store_, dtype, tensors, std::move(mirrors), 8,
                                                 1 << 20);
  }
  ~MemoryCoordinator() override { fs::remove_all(dir_); }

  exchange::PublishedVersion publish(uint64_t version, const std::vector<std::vector<float>>& v) {
    std::string bytes;
    for (const auto& t : v) bytes += exchange::to_published(dtype_, t);
    exchange::PublishedVersion p = pub_->publish("r", version, 0, std::move(bytes));
    manifests_[version] = protocol::sign_manifest(p.manifest, key_);
    latest_ = version;
    return p;
  }

  asio::awaitable<uint64_t> send(wire::Envelope e) override {
    if (e.has_manifest_request()) {
      wire::Envelope r;
      const uint64_t v = e.manifest_request().policy_version();
      *r.mutable_manifest() = manifests_.at(manifests_.contains(v) ? v : latest_);
      inbox_.push_back(r);
    } else if (e.has_blob_request()) {
      const std::string& raw = e.blob_request().blake2b();
      requested.push_back(raw);
      protocol::Digest d{};
      std::memcpy(d.data(), raw.data(), d.size());
      const std::string b = store_->read(d, 0, UINT64_MAX);
      channel_bytes += b.size();
      for (size_t off = 0; off < b.size() || off == 0; off += 1 << 20) {
        wire::Envelope c;
        auto* ch = c.mutable_blob_chunk();
        ch->set_blake2b(raw);
        ch->set_offset(off);
        ch->set_total_bytes(b.size());
        ch->set_data(b.substr(off, 1 << 20));
        inbox_.push_back(c);
        if (b.empty()) break;
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

  const fs::path& dir() const { return dir_; }
  std::vector<std::string> requested;  // blob digests asked for over the link, in order
  uint64_t channel_bytes = 0;
  std::function<void(std::deque<wire::Envelope>&)> tamper;

 private:
  const protocol::Identity& key_;
  const exchange::ParamLayout& layout_;
  wire::DType dtype_;
  fs::path dir_;
  std::shared_ptr<exchange::BlobStore> store_;
  std::unique_ptr<exchange::Publisher> pub_;
  std::map<uint64_t, wire::SignedManifest> manifests_;
  uint64_t latest_ = 0;
  std::deque<wire::Envelope> inbox_;
  uint64_t id_ = 0;
};

std::vector<std::vector<float>> values(const exchange::ParamLayout& l, float base) {
  std::vector<std::vector<float>> v;
  std::mt19937 rng(static_cast<uint32_t>(base * 1000));
  std::normal_distribution<float> n(0.0f, 0.02f);
  for (const auto& s : l.slots) {
    v.emplace_back(s.numel);
    for (auto& x : v.back()) x = base + n(rng);
  }
  return v;
}

// What an RL step does to BF16 weights at a small learning rate: most elements keep their bits.
void nudge(std::vector<std::vector<float>>& v, uint32_t seed, double share) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  for (auto& t : v)
    for (auto& x : t)
      if (u(rng) < share) x *= 1.01f;
}

// The values a node must hold: the published bits, read back.
std::vector<float> published(wire::DType dtype, const std::vector<float>& v) {
  std::vector<float> out(v.size());
  exchange::from_published(dtype, exchange::to_published(dtype, v), out);
  return out;
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

class WeightSyncTest : public ::testing::TestWithParam<wire::DType> {
 protected:
  protocol::Identity coordinator = protocol::Identity::generate();
  exchange::ParamLayout l = layout();
  std::map<std::string, std::vector<float>> replica;
  void load(WeightSync& sync, const StagedWeights& w) {
    sync.load(w, [&](const std::string& name, const std::vector<float>& v) { replica[name] = v; });
  }
  // The replica holds exactly the published bits of `v`, tensor by tensor.
  void expect_holds(wire::DType dtype, const std::vector<std::vector<float>>& v) {
    for (size_t i = 0; i < l.slots.size(); ++i) {
      const auto want = published(dtype, v[i]);
      const auto& got = replica.at(l.slots[i].name);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0) << l.slots[i].name;
    }
  }
};

TEST_P(WeightSyncTest, SnapshotFirstThenPatchesOfOnlyWhatChanged) {
  const wire::DType dtype = GetParam();
  MemoryCoordinator link(coordinator, l, dtype);
  WeightSync sync(l, coordinator.id(), "r", dtype);
  auto v = values(l, 1.0f);
  const auto p1 = link.publish(1, v);
  const StagedWeights w1 = run(sync.fetch(link, 1));
  EXPECT_EQ(link.requested.size(), static_cast<size_t>(p1.manifest.snapshot_size()));
  EXPECT_TRUE(replica.empty());  // staged, not loaded
  load(sync, w1);
  EXPECT_TRUE(sync.holds(1));
  expect_holds(dtype, v);
  EXPECT_EQ(sync.stats().snapshots, 1);
  // Version 2 changes only the bias: one patch, one staged tensor.
  v[2][0] += 1.0f;
  const auto p2 = link.publish(2, v);
  ASSERT_EQ(p2.manifest.patches_size(), 1);
  EXPECT_EQ(p2.patch.changed, 1u);
  link.requested.clear();
  const StagedWeights w2 = run(sync.fetch(link, 2));
  ASSERT_EQ(link.requested.size(), 1u);
  EXPECT_EQ(link.requested[0], p2.manifest.patches(0).blob().blake2b());
  ASSERT_EQ(w2.tensors.size(), 1u);
  EXPECT_EQ(w2.tensors[0].names, std::vector<std::string>{"b"});
  load(sync, w2);
  expect_holds(dtype, v);
  EXPECT_EQ(sync.version(), 2u);
  EXPECT_EQ(sync.stats().patches, 1);
  EXPECT_DOUBLE_EQ(sync.fetched_bytes(), double(p1.snapshot_bytes + p2.patch.patch_bytes));
}

TEST_P(WeightSyncTest, NodeThatSkipsVersionsAppliesTheChainAndJoinerTakesTheSnapshot) {
  const wire::DType dtype = GetParam();
  MemoryCoordinator link(coordinator, l, dtype);
  WeightSync sync(l, coordinator.id(), "r", dtype);
  auto v = values(l, 0.5f);
  link.publish(1, v);
  load(sync, run(sync.fetch(link, 1)));
  uint64_t chain = 0;
  for (uint64_t version = 2; version <= 4; ++version) {
    nudge(v, static_cast<uint32_t>(version), 0.01);
    const auto p = link.publish(version, v);
    chain += p.manifest.patches(0).blob().size_bytes();
    EXPECT_LT(p.patch.changed, p.patch.elements / 50) << "most bits stay";
  }
  link.requested.clear();
  load(sync, run(sync.fetch(link, 4)));
  EXPECT_EQ(link.requested.size(), 3u);  // v1→2, v2→3, v3→4
  EXPECT_EQ(sync.stats().patches, 3);
  EXPECT_EQ(sync.stats().snapshots, 1);
  expect_holds(dtype, v);

  // A node joining now fetches the snapshot of v4 and holds the same bits.
  std::map<std::string, std::vector<float>> first = replica;
  replica.clear();
  WeightSync joiner(l, coordinator.id(), "r", dtype);
  load(joiner, run(joiner.fetch(link, 4)));
  EXPECT_EQ(joiner.stats().snapshots, 1);
  EXPECT_EQ(joiner.stats().patches, 0);
  EXPECT_EQ(replica, first);
  EXPECT_LT(double(chain), joiner.stats().snapshot_bytes);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WeightSyncTest,
                         ::testing::Values(wire::DTYPE_F32, wire::DTYPE_BF16),
                         [](const auto& info) {
                           return std::string(exchange::dtype_name(info.param));
                         });

class WeightSyncRefusals : public ::testing::Test {
 protected:
  protocol::Identity coordinator = protocol::Identity::generate();
  exchange::ParamLayout l = layout();
  MemoryCoordinator link{coordinator, l, wire::DTYPE_BF16};
};

TEST_F(WeightSyncRefusals, BytesThatDoNotMatchTheirDigestAreRefused) {
  WeightSync sync(l, coordinator.id(), "r", wire::DTYPE_BF16);
  link.publish(1, values(l, 1.0f));
  link.tamper = [](std::deque<wire::Envelope>& in) {
    (*in[0].mutable_blob_chunk()->mutable_data())[100] ^= 1;
  };
  try {
    (void)run(sync.fetch(link, 1));
    FAIL() << "tampered bytes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not match its digest"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(sync.holds(1));
}

TEST_F(WeightSyncRefusals, ChunksOutOfOrderAreRefused) {
  WeightSync sync(l, coordinator.id(), "r", wire::DTYPE_BF16);
  link.publish(1, values(l, 1.0f));
  link.tamper = [](std::deque<wire::Envelope>& in) {
    in[0].mutable_blob_chunk()->set_offset(7);  // does not continue the blob at 0
  };
  EXPECT_THROW((void)run(sync.fetch(link, 1)), Error);
}

TEST_F(WeightSyncRefusals, ManifestSignedByAnotherKeyIsRefused) {
  const protocol::Identity mallory = protocol::Identity::generate();
  WeightSync sync(l, mallory.id(), "r", wire::DTYPE_BF16);  // the node pinned another key
  link.publish(1, values(l, 1.0f));
  EXPECT_ANY_THROW((void)run(sync.fetch(link, 1)));
  EXPECT_TRUE(link.requested.empty());  // no blob was asked for
}

TEST_F(WeightSyncRefusals, ManifestThatDoesNotFitTheModelOrDtypeIsRefused) {
  exchange::ParamLayout other = l;
  other.slots[2].shape = {2, 2};
  WeightSync sync(other, coordinator.id(), "r", wire::DTYPE_BF16);
  link.publish(1, values(l, 1.0f));
  EXPECT_THROW((void)run(sync.fetch(link, 1)), Error);
  WeightSync f32(l, coordinator.id(), "r", wire::DTYPE_F32);  // the round said F32
  EXPECT_THROW((void)run(f32.fetch(link, 1)), Error);
  EXPECT_TRUE(link.requested.empty());
}

// ---- HTTP mirrors: real nginx processes serving a blob folder.

std::string find_nginx() {
  for (const char* p : {"/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"})
    if (fs::exists(p)) return p;
  return "";
}

uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  COHORT_CHECK(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t n = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(fd);
  return ntohs(a.sin_port);
}

// nginx in the foreground serving `root` at /blobs/ on a loopback port, stopped at destruction.
class Nginx {
 public:
  Nginx(const std::string& binary, const fs::path& root, uint16_t port)
      : dir_(temp_dir("nginx")), port_(port) {
    std::ofstream(dir_ / "nginx.conf")
        << "daemon off; master_process off; worker_processes 1;\n"
        << "pid " << (dir_ / "nginx.pid").string() << ";\n"
        << "error_log " << (dir_ / "error.log").string() << ";\n"
        << "events {}\nhttp {\n  access_log off; default_type application/octet-stream;\n"
        << "  client_body_temp_path " << dir_.string() << "/body; proxy_temp_path " << dir_.string()
        << "/proxy; fastcgi_temp_path " << dir_.string() << "/fcgi; uwsgi_temp_path "
        << dir_.string() << "/uwsgi; scgi_temp_path " << dir_.string() << "/scgi;\n"
        << "  server { listen 127.0.0.1:" << port_ << "; location /blobs/ { alias "
        << root.string() << "/; } }\n}\n";
    const std::string conf = (dir_ / "nginx.conf").string(), prefix = dir_.string() + "/";
    std::vector<const char*> argv = {binary.c_str(), "-p", prefix.c_str(), "-c", conf.c_str(),
                                     nullptr};
    COHORT_CHECK(::posix_spawn(&pid_, binary.c_str(), nullptr, nullptr,
                               const_cast<char* const*>(argv.data()), environ) == 0);
    // Ready when it accepts a connection.
    for (int i = 0; i < 200; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(port_);
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(fd);
      if (up) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    throw Error("nginx did not start; its log is in " + dir_.string());
  }
  ~Nginx() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
    fs::remove_all(dir_);
  }

 private:
  fs::path dir_;
  uint16_t port_ = 0;
  pid_t pid_ = 0;
};

std::string url(uint16_t port) { return "http://127.0.0.1:" + std::to_string(port); }

TEST(WeightSyncMirrors, NodesFetchFromNginxAndSkipAMirrorThatCorruptsOrIsDown) {
  const std::string nginx = find_nginx();
  if (nginx.empty()) GTEST_SKIP() << "nginx is not installed (scripts/bootstrap installs it)";
  protocol::Identity coordinator = protocol::Identity::generate();
  exchange::ParamLayout l = layout();
  const uint16_t down = free_port(), bad_port = free_port(), good_port = free_port();
  // The round's manifest lists a mirror that is down, one that flips a byte in every blob, then
  // a good one (nginx serving a copy of the coordinator's blob folder, here the folder itself).
  MemoryCoordinator round(coordinator, l, wire::DTYPE_BF16,
                          {url(down), url(bad_port), url(good_port)});
  auto v = values(l, 2.0f);
  round.publish(1, v);
  nudge(v, 7, 0.01);
  const auto p2 = round.publish(2, v);
  const fs::path bad_root = temp_dir("bad-mirror");
  for (const auto& e : fs::directory_iterator(round.dir())) {
    std::ifstream in(e.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    bytes[bytes.size() / 2] ^= 0x40;
    std::ofstream(bad_root / e.path().filename(), std::ios::binary) << bytes;
  }
  Nginx bad(nginx, bad_root, bad_port);
  auto good = std::make_unique<Nginx>(nginx, round.dir(), good_port);

  // A node that names the good mirror itself: every byte from it, nothing over the channel.
  WeightSync own(l, coordinator.id(), "r", wire::DTYPE_BF16, {url(good_port)});
  std::map<std::string, std::vector<float>> a, b, c;
  auto into = [](auto& m) {
    return [&m](const std::string& name, const std::vector<float>& x) { m[name] = x; };
  };
  own.load(run(own.fetch(round, 2)), into(a));
  EXPECT_TRUE(round.requested.empty());
  EXPECT_DOUBLE_EQ(own.stats().mirror_bytes, double(p2.snapshot_bytes));
  EXPECT_EQ(own.stats().mirrors_skipped, 0);
  for (size_t i = 0; i < l.slots.size(); ++i) {
    const auto want = published(wire::DTYPE_BF16, v[i]);
    EXPECT_EQ(std::memcmp(a.at(l.slots[i].name).data(), want.data(), want.size() * 4), 0);
  }

  // A node with only the manifest's mirrors: the one that is down and the corrupting one are
  // skipped (the log says why), the good one serves every byte.
  WeightSync listed(l, coordinator.id(), "r", wire::DTYPE_BF16);
  listed.load(run(listed.fetch(round, 2)), into(b));
  EXPECT_EQ(listed.stats().mirrors_skipped, 2);
  EXPECT_DOUBLE_EQ(listed.stats().mirror_bytes, double(p2.snapshot_bytes));
  EXPECT_TRUE(round.requested.empty());
  EXPECT_EQ(b, a);

  // No good mirror left: the coordinator's channel serves, and the bits are the same.
  good.reset();
  WeightSync stranded(l, coordinator.id(), "r", wire::DTYPE_BF16);
  stranded.load(run(stranded.fetch(round, 2)), into(c));
  EXPECT_EQ(stranded.stats().mirrors_skipped, 3);
  EXPECT_DOUBLE_EQ(stranded.stats().channel_bytes, double(p2.snapshot_bytes));
  EXPECT_EQ(c, a);
  fs::remove_all(bad_root);
}

// A server that answers every request with `reply` (bytes as they are), then closes: a mirror
// that does what it likes, for one connection at a time.
class RawHttpServer {
 public:
  explicit RawHttpServer(std::string reply) : reply_(std::move(reply)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd_, 8), 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        const int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        std::string head;
        char buf[4096];
        while (head.find("\r\n\r\n") == std::string::npos) {
          const ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n <= 0) break;
          head.append(buf, static_cast<size_t>(n));
        }
        for (size_t at = 0; at < reply_.size();) {
          const ssize_t n = ::send(c, reply_.data() + at, reply_.size() - at, MSG_NOSIGNAL);
          if (n <= 0) break;
          at += static_cast<size_t>(n);
        }
        ::close(c);
      }
    });
  }
  ~RawHttpServer() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string base() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  std::string reply_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

// Mirrors are strangers: one that ignores Range answers 200 with the whole blob, and the node
// keeps only the range it asked for and stops reading there; one that answers 206 with more
// bytes than the range is refused without the node holding them.
TEST(HttpBlobRange, KeepsOnlyTheRangeWhateverTheServerSends) {
  std::string blob(6 << 20, '\0');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>((i * 131) >> 7);
  const std::string head = "Content-Type: application/octet-stream\r\nContent-Length: " +
                           std::to_string(blob.size()) + "\r\nConnection: close\r\n\r\n";
  {
    RawHttpServer whole("HTTP/1.1 200 OK\r\n" + head + blob);  // Range ignored: everything
    EXPECT_EQ(http_blob_range(whole.base(), "x", 3 << 20, 1 << 20), blob.substr(3 << 20, 1 << 20));
    EXPECT_EQ(http_blob_range(whole.base(), "x", 0, 10), blob.substr(0, 10));
  }
  RawHttpServer greedy("HTTP/1.1 206 Partial Content\r\n" + head + blob);  // claims a range
  try {
    (void)http_blob_range(greedy.base(), "x", 0, 1 << 20);
    ADD_FAILURE() << "a 206 with more bytes than the range was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more bytes than the range"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace cohort::node
