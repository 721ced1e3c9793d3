#include "node/weight_sync.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include "common/async.h"
#include "common/check.h"
#include "common/clock.h"
#include "exchange/manifest.h"
#include "exchange/weight_patch.h"
#include "exchange/weights.h"
#include "protocol/bytes.h"
#include "protocol/signed_update.h"

namespace cohort::node {

namespace {


}  // namespace

std::pair<std::string, std::string> split_url(const std::string& url) {
  const auto scheme_end = url.find("://");
  const auto path_at = scheme_end == std::string::npos ? std::string::npos : url.find('/', scheme_end + 3);
  return {url.substr(0, path_at), path_at == std::string::npos ? "" : url.substr(path_at)};
}

std::string http_blob_range(const std::string& base, const std::string& hex, uint64_t offset,
                            uint64_t length) {
  // httplib takes "scheme://host:port"; a path after it is the mirror's prefix.
  auto [origin, prefix] = split_url(base);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  httplib::Client cli(origin);
  if (!cli.is_valid()) throw Error("not a URL this node can fetch from");
  cli.set_connection_timeout(5, 0);
  cli.set_read_timeout(30, 0);
  cli.set_follow_location(true);
  const httplib::Headers headers = {
      {"Range", "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + length - 1)}};
  // The body is received piece by piece and never held past what was asked for: a mirror that
  // sends more (or a whole huge blob) cannot make the node allocate it.
  std::string out;
  int status = 0;
  uint64_t seen = 0;  // bytes of a 200 answer so far (a server that ignores Range)
  bool overflow = false;
  auto res = cli.Get(
      prefix + "/blobs/" + hex, headers,
      [&](const httplib::Response& r) {
        status = r.status;
        return status == 206 || status == 200;
      },
      [&](const char* data, size_t n) {
        if (status == 206) {
          if (out.size() + n > length) {
            overflow = true;
            return false;
          }
          out.append(data, n);
          return true;
        }
        // 200: the whole blob; keep [offset, offset + length) and stop there.
        const uint64_t begin = seen, end = seen + n;
        seen = end;
        if (end > offset && begin < offset + length) {
          const uint64_t from = std::max(begin, offset), to = std::min(end, offset + length);
          out.append(data + (from - begin), to - from);
        }
        return out.size() < length;
      });
  if (overflow) throw Error("answered more bytes than the range of " + std::to_string(length));
  if ((status == 206 || status == 200) && out.size() == length) return out;
  if (status == 0 && !res) throw Error("request failed: " + httplib::to_string(res.error()));
  if (status == 206 || status == 200)
    throw Error("answered " + std::to_string(out.size()) + " bytes for a range of " + std::to_string(length));
  throw Error("answered HTTP " + std::to_string(status));
}

WeightSync::WeightSync(const exchange::ParamLayout& layout, protocol::PeerId coordinator,
                       std::string round_id, wire::DType dtype, std::vector<std::string> mirrors,
                       bool reference)
    : layout_(layout),
      coordinator_(coordinator),
      round_id_(std::move(round_id)),
      dtype_(dtype),
      own_mirrors_(std::move(mirrors)),
      reference_(reference) {}

WeightSync::~WeightSync() { http_.join(); }

asio::awaitable<std::string> fetch_blob_over_channel(CoordinatorLink& link, const wire::BlobRef& ref) {
  wire::Envelope req;
  req.mutable_blob_request()->set_blake2b(ref.blake2b());
  co_await link.send(req);
  const uint64_t size = ref.size_bytes();
  std::string out;
  out.reserve(size);
  // Chunks come in offset order (docs/PROTOCOL.md); anything else ends the fetch.
  do {
    const wire::Envelope c = co_await link.receive();
    if (c.has_error()) throw Error("coordinator: " + c.error().message());
    if (!c.has_blob_chunk()) throw Error("expected a blob chunk");
    const auto& chunk = c.blob_chunk();
    if (chunk.blake2b() != ref.blake2b() || chunk.total_bytes() != size ||
        chunk.offset() != out.size() || chunk.data().size() > size - out.size() ||
        (chunk.data().empty() && size > 0))
      throw Error("blob chunk out of order or out of bounds");
    out.append(chunk.data());
  } while (out.size() < size);
  co_return out;
}

asio::awaitable<std::string> WeightSync::fetch_blob(CoordinatorLink& link, const wire::BlobRef& ref,
                                                    const std::vector<std::string>& mirrors) {
  const std::string hex = protocol::to_hex(protocol::as_bytes(ref.blake2b()));
  for (const auto& base : mirrors) {
    if (bad_mirrors_.contains(base)) continue;
    std::string why;
    try {
      std::string bytes;
      for (uint64_t off = 0; off < ref.size_bytes(); off += kHttpRangeBytes) {
        const uint64_t n = std::min(kHttpRangeBytes, ref.size_bytes() - off);
        auto get = [&base, &hex, off, n] { return http_blob_range(base, hex, off, n); };
        bytes += co_await run_on(http_.get_executor(), get);
      }
      if (exchange::bytes_match(ref, bytes)) {
        stats_.mirror_bytes += static_cast<double>(bytes.size());
        co_return bytes;
      }
      why = "served bytes that do not match the blob's digest";
    } catch (const std::exception& e) {
      why = e.what();
    }
    bad_mirrors_.insert(base);
    stats_.mirrors_skipped++;
    spdlog::warn("node: mirror {} skipped for the rest of this session: blob {}: {}", base,
                 hex.substr(0, 16), why);
  }
  std::string bytes = co_await fetch_blob_over_channel(link, ref);
  stats_.channel_bytes += static_cast<double>(bytes.size());
  if (!exchange::bytes_match(ref, bytes))
    throw Error("the coordinator served blob " + hex.substr(0, 16) +
                " with bytes that do not match its digest");
  co_return bytes;
}

asio::awaitable<bool> WeightSync::apply_patches(CoordinatorLink& link,
                                                const wire::WeightManifest& m,
                                                const std::vector<const wire::PatchRef*>& patches,
                                                const std::vector<std::string>& mirrors) {
  // A patch's body holds at most every element's position and value, and each tensor's header.
  uint64_t max_body = 0;
  for (const auto& e : m.tensors()) max_body += e.size_bytes() * 6 + e.name().size() + 64;
  for (const wire::PatchRef* p : patches) {
    const std::string patch = co_await fetch_blob(link, p->blob(), mirrors);
    stats_.patch_bytes += static_cast<double>(patch.size());
    if (auto err = exchange::apply_patch(patch, *bytes_version_, bytes_, max_body)) {
      spdlog::warn("node: patch v{} -> v{} refused ({}); fetching the snapshot", p->from_version(),
                   p->to_version(), *err);
      bytes_version_.reset();
      co_return false;
    }
    bytes_version_ = p->to_version();
    stats_.patches++;
  }
  for (const auto& e : m.tensors())
    if (!exchange::bytes_match(e, bytes_.at(e.name()))) {
      spdlog::warn("node: patches to v{} do not rebuild {}'s signed bytes; fetching the snapshot",
                   m.policy_version(), e.name());
      bytes_version_.reset();
      co_return false;
    }
  co_return true;
}

asio::awaitable<void> WeightSync::fetch_snapshot(CoordinatorLink& link,
                                                 const wire::WeightManifest& m,
                                                 const std::vector<std::string>& mirrors) {
  bytes_version_.reset();
  // Where each tensor sits in the concatenation the shards cut up.
  std::vector<std::pair<uint64_t, std::string*>> at;
  uint64_t total = 0;
  for (const auto& e : m.tensors()) {
    std::string& b = bytes_[e.name()];
    b.resize(e.size_bytes());
    at.emplace_back(total, &b);
    total += e.size_bytes();
  }
  uint64_t pos = 0;
  size_t t = 0;
  for (const auto& shard : m.snapshot()) {
    const std::string s = co_await fetch_blob(link, shard, mirrors);
    stats_.snapshot_bytes += static_cast<double>(s.size());
    for (uint64_t i = 0; i < s.size();) {
      while (t + 1 < at.size() && at[t + 1].first <= pos) ++t;
      std::string& dst = *at[t].second;
      const uint64_t in_tensor = pos - at[t].first;
      const uint64_t n = std::min<uint64_t>(s.size() - i, dst.size() - in_tensor);
      std::memcpy(dst.data() + in_tensor, s.data() + i, n);
      i += n;
      pos += n;
    }
  }
  for (const auto& e : m.tensors())
    if (!exchange::bytes_match(e, bytes_.at(e.name())))
      throw Error("snapshot tensor " + e.name() + " does not match its signed digest");
  bytes_version_ = m.policy_version();
  stats_.snapshots++;
}

asio::awaitable<StagedWeights> WeightSync::fetch(CoordinatorLink& link, uint64_t wanted) {
  wire::Envelope req;
  req.mutable_manifest_request()->set_policy_version(wanted);
  req.mutable_manifest_request()->set_reference(reference_);
  co_await link.send(req);
  const wire::Envelope env = co_await link.receive();
  if (env.has_error()) throw Error("coordinator: " + env.error().message());
  if (!env.has_manifest()) throw Error("expected a manifest");
  const wire::WeightManifest m = protocol::verify_manifest(env.manifest(), coordinator_);
  if (m.round_id() != round_id_) throw Error("manifest of another round");
  if (reference_ && m.policy_version() != 0)
    throw Error("the reference policy's manifest names version " + std::to_string(m.policy_version()));
  if (auto why = exchange::manifest_mismatch(m, layout_, dtype_)) throw Error(*why);
  if (auto why = exchange::blob_list_mismatch(m)) throw Error(*why);
  StagedWeights out;
  out.version = m.policy_version();
  out.dtype = dtype_;
  if (out.version != wanted && !reference_)
    spdlog::info("node: lease asked for version {}, coordinator published {}", wanted, out.version);

  std::vector<std::string> mirrors = own_mirrors_;
  mirrors.insert(mirrors.end(), m.mirrors().begin(), m.mirrors().end());
  const exchange::FetchPlan plan = exchange::plan_fetch(m, bytes_version_);
  if (!plan.nothing) {
    const double t0 = mono_s(), fetched0 = fetched_bytes();
    const bool patched =
        !plan.patches.empty() && co_await apply_patches(link, m, plan.patches, mirrors);
    if (!patched) {
      if (!plan.patches.empty()) stats_.patch_fallbacks++;
      co_await fetch_snapshot(link, m, mirrors);
    }
    spdlog::info("node: {}v{} from {}: {:.2f} MB in {:.2f} s, checked against the manifest",
                 reference_ ? "reference " : "", m.policy_version(),
                 patched ? fmt::format("{} patch{}", plan.patches.size(),
                                       plan.patches.size() == 1 ? "" : "es")
                         : "the snapshot",
                 (fetched_bytes() - fetched0) / 1e6, mono_s() - t0);
  }

  std::map<std::string, std::vector<const wire::ManifestEntry*>> by_digest;
  for (const auto& e : m.tensors()) {
    auto held = loaded_digests_.find(e.name());
    if (held == loaded_digests_.end() || held->second != e.blake2b()) by_digest[e.blake2b()].push_back(&e);
  }
  for (const auto& [d, es] : by_digest) {
    StagedWeights::Tensor t{.digest = d, .names = {}, .bytes = bytes_.at(es.front()->name())};
    for (const auto* e : es) t.names.push_back(e->name());
    out.tensors.push_back(std::move(t));
  }
  co_return out;
}

void WeightSync::load(
    const StagedWeights& w,
    const std::function<void(const std::string&, const std::vector<float>&)>& put) {
  std::vector<float> values;
  for (const auto& t : w.tensors) {
    values.resize(t.bytes.size() / exchange::element_bytes(w.dtype));
    exchange::from_published(w.dtype, t.bytes, values);
    for (const auto& name : t.names) {
      put(name, values);
      loaded_digests_[name] = t.digest;
    }
  }
  version_ = w.version;
  loaded_ = true;
}

}  // namespace cohort::node
