// The status document (JSON, and Prometheus text through metrics.h), built on the network thread
// from the ledger and live state; the HTTP server's threads ask for it.
#include <charconv>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>

#include "coordinator/coordinator_impl.h"
#include "coordinator/dashboard.h"
#include "coordinator/metrics.h"
#include "exchange/weights.h"

namespace cohort::coordinator {

using nlohmann::json;

std::string Coordinator::Impl::live_status() {
  json j = json::parse(ledger->status_json());
  j["round_id"] = cfg.round_id;
  j["version"] = sched->version();
  j["step"] = sched->version();
  j["steps_total"] = cfg.steps;
  j["finished"] = finished;
  {
    // What the latest version costs a node to fetch: the snapshot, or the patch from the one before.
    const exchange::VersionBlobs& c = published.back()->content;
    const double params = static_cast<double>(policy_params);
    j["weights"] = {{"policy_dtype", exchange::dtype_name(settings.policy_dtype())},
                    {"snapshot_bytes", c.snapshot_bytes},
                    {"patch_bytes", c.patch.patch_bytes},
                    {"patch_bytes_per_param", params > 0 ? double(c.patch.patch_bytes) / params : 0.0},
                    {"changed_elements", c.patch.changed},
                    {"changed_fraction", c.patch.elements ? double(c.patch.changed) / double(c.patch.elements) : 0.0}};
  }
  j["coordinator"] = identity.id().hex();
  j["uptime_s"] = mono_s() - started_mono;
  j["active_leases"] = sched->active();
  j["connected"] = sched->connected();
  j["min_peers"] = cfg.min_peers;
  j["leases_started"] = sched->started();  // false: waiting for min_peers
  j["banned"] = banned.size();
  j["audits"] = audits;
  // Where audits were recomputed, and the coordinator's own compute on them (validators).
  j["validation"] = {{"validators", cfg.validators},
                     {"by_validators", audits_by_validators},
                     {"spot_checks", spot_checks},
                     {"disagreements", disagreements},
                     {"fallbacks", audit_fallbacks},
                     {"waiting", audits_waiting.size()},
                     {"out", audits_out.size()},
                     {"coordinator_audit_s", coordinator_audit_s}};
  j["applying_step"] = applying_step;  // 0: the executor is not applying a step
  j["aggregation"] = aggregation_rule_name(cfg.aggregation.rule);
  if (server) {  // the door: connections accepted, and closed before or during the handshake
    const protocol::Server::Stats& st = server->stats();
    j["connections"] = {{"accepted", st.accepted.load()},
                        {"handshakes_ok", st.handshakes_ok.load()},
                        {"handshakes_failed", st.handshakes_failed.load()},
                        {"rejected_address", st.rejected_address.load()},
                        {"rejected_rate", st.rejected_rate.load()},
                        {"rejected_busy", st.rejected_busy.load()},
                        {"evicted", st.evicted.load()}};
  }
  json open = json::object();
  for (const auto& [s, done] : sched->open_steps())
    open[std::to_string(s)] = {{"done", done}, {"of", cfg.grpo.prompts_per_step}};
  j["open_steps"] = open;
  for (auto& [k, p] : j["peers"].items()) {
    p["connected"] = sched->peer_is_connected(k);
    p["throughput_groups_per_s"] = sched->throughput(k);
    p["banned"] = banned.contains(k);
    const auto streak = trust_streak.find(k);
    const int64_t n = streak == trust_streak.end() ? 0 : streak->second;
    p["trust_streak"] = n;
    const auto v = validations.find(k);
    p["validations"] = v == validations.end() ? 0 : v->second;
    p["audit_probability"] =
        audit_probability(n, cfg.adaptive_trust, cfg.trust_after, cfg.recompute_fraction);
  }
  j["now_ms"] = unix_ms();  // the clock last_seen_ms and applied_ms are read against
  return j.dump();
}

namespace {

// A single "bytes=" range of a blob of `size` bytes as [begin, end), nullopt when there is none
// this server applies (no Range, several ranges, another unit: the whole blob is sent, as RFC 9110
// allows), or {size, size} when it cannot be satisfied.
std::optional<std::pair<uint64_t, uint64_t>> parse_range(const std::string& h, uint64_t size) {
  if (!h.starts_with("bytes=") || h.find(',') != std::string::npos) return std::nullopt;
  const std::string spec = h.substr(6);
  const auto dash = spec.find('-');
  if (dash == std::string::npos) return std::nullopt;
  auto number = [](const std::string& t, uint64_t& v) {
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    return !t.empty() && ec == std::errc{} && end == t.data() + t.size();
  };
  const std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
  uint64_t first = 0, last = 0;
  const std::pair<uint64_t, uint64_t> unsatisfiable{size, size};
  if (a.empty()) {  // the last b bytes
    if (!number(b, last)) return std::nullopt;
    if (last == 0 || size == 0) return unsatisfiable;
    return std::pair{size - std::min(size, last), size};
  }
  if (!number(a, first) || (!b.empty() && (!number(b, last) || last < first))) return std::nullopt;
  if (first >= size) return unsatisfiable;
  return std::pair{first, b.empty() ? size : std::min(size, last + 1)};
}

}  // namespace

// GET /blobs/<hex>: a published blob from the blob store, Range requests answered 206; the reply
// is read from the file as it is written (a blob may be hundreds of MB).
HttpResponse Coordinator::Impl::http_blob(const HttpRequest& req) {
  const auto d = exchange::parse_digest_hex(req.path.substr(7));
  const auto store = blob_store;
  const auto size = d && store ? store->size(*d) : std::nullopt;
  if (!size)
    return {404, "application/json",
            R"({"error":"no such blob: GET /blobs/<64 lowercase hex BLAKE2b-256> of a published one"})"};
  HttpResponse r{200, "application/octet-stream", {}};
  r.headers.emplace_back("Accept-Ranges", "bytes");
  r.headers.emplace_back("Cache-Control", "public, max-age=31536000, immutable");
  uint64_t begin = 0, end = *size;
  if (auto range = parse_range(req.range, *size)) {
    if (range->first == *size && range->second == *size) {
      r.status = 416;
      r.headers.emplace_back("Content-Range", "bytes */" + std::to_string(*size));
      r.body = R"({"error":"range not satisfiable"})";
      r.content_type = "application/json";
      return r;
    }
    std::tie(begin, end) = *range;
    r.status = 206;
    r.headers.emplace_back("Content-Range", "bytes " + std::to_string(begin) + "-" +
                                                std::to_string(end - 1) + "/" +
                                                std::to_string(*size));
  }
  r.stream_bytes = end - begin;
  r.stream = [store, d = *d, begin](uint64_t offset, uint64_t max) {
    return store->read(d, begin + offset, max);
  };
  return r;
}

HttpResponse Coordinator::Impl::http_get(const HttpRequest& req) {
  const std::string& path = req.path;
  if (path.starts_with("/blobs/")) return http_blob(req);
  if (path == "/" || path == "/index.html") {
    HttpResponse r{200, "text/html; charset=utf-8", std::string(dashboard_html())};
    r.headers.emplace_back("Cache-Control", "no-cache");
    return r;
  }
  if (path == "/round") {
    std::lock_guard lock(card_mutex);
    if (round_card.empty())
      return {503, "application/json", R"({"error":"the round card is not ready yet"})"};
    return {200, "application/json", round_card};
  }
  if (path != "/status" && path != "/metrics")
    return {404, "application/json",
            R"({"error":"try GET / (the dashboard), GET /round (the round card), GET /status, GET /metrics or GET /blobs/<hex>"})"};
  auto done = std::make_shared<std::promise<std::string>>();
  std::future<std::string> f = done->get_future();
  asio::post(io, [this, done] {
    try {
      done->set_value(live_status());
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  });
  if (f.wait_for(std::chrono::seconds(3)) != std::future_status::ready)
    return {503, "application/json", R"({"error":"the coordinator is busy; try again"})"};
  if (path == "/metrics") return {200, "text/plain; version=0.0.4", prometheus_text(f.get())};
  return {200, "application/json", f.get()};
}

}  // namespace cohort::coordinator
