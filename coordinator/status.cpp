// The status document (JSON, and Prometheus text through metrics.h), built on the network thread
// from the ledger and live state; the HTTP server's threads ask for it.
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>

#include "coordinator/coordinator_impl.h"
#include "coordinator/metrics.h"

namespace cohort::coordinator {

using nlohmann::json;

std::string Coordinator::Impl::live_status() {
  json j = json::parse(ledger->status_json());
  j["round_id"] = cfg.round_id;
  j["version"] = sched->version();
  j["step"] = sched->version();
  j["steps_total"] = cfg.steps;
  j["finished"] = finished;
  j["coordinator"] = identity.id().hex();
  j["uptime_s"] = mono_s() - started_mono;
  j["active_leases"] = sched->active();
  j["connected"] = sched->connected();
  j["min_peers"] = cfg.min_peers;
  j["leases_started"] = sched->started();  // false: waiting for min_peers
  j["banned"] = banned.size();
  j["audits"] = audits;
  j["applying_step"] = applying_step;  // 0: the executor is not applying a step
  j["aggregation"] = aggregation_rule_name(cfg.aggregation.rule);
  json open = json::object();
  for (const auto& [s, done] : sched->open_steps())
    open[std::to_string(s)] = {{"done", done}, {"of", cfg.grpo.prompts_per_step}};
  j["open_steps"] = open;
  for (auto& [k, p] : j["peers"].items()) {
    p["connected"] = sched->peer_is_connected(k);
    p["throughput_groups_per_s"] = sched->throughput(k);
  }
  return j.dump();
}

HttpResponse Coordinator::Impl::http_get(const std::string& path) {
  if (path != "/status" && path != "/" && path != "/metrics")
    return {404, "application/json", R"({"error":"try GET /status or GET /metrics"})"};
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
