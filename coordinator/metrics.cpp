#include "coordinator/metrics.h"

#include <nlohmann/json.hpp>

#include <sstream>
#include <utility>
#include <vector>

#include "common/check.h"

namespace cohort::coordinator {
namespace {

using nlohmann::json;

std::string label_value(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 128)) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out;
}

class Writer {
 public:
  void family(const char* name, const char* type, const char* help) {
    os_ << "# HELP cohort_" << name << ' ' << help << "\n# TYPE cohort_" << name << ' ' << type << '\n';
  }
  void sample(const char* name, double v, const std::string& labels = "") {
    os_ << "cohort_" << name;
    if (!labels.empty()) os_ << '{' << labels << '}';
    os_ << ' ' << v << '\n';
  }
  std::string str() const { return os_.str(); }

 private:
  std::ostringstream os_;
};

double num(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !(it->is_number() || it->is_boolean())) return 0;
  return it->is_boolean() ? (it->get<bool>() ? 1 : 0) : it->get<double>();
}

}  // namespace

std::string prometheus_text(const std::string& status_json) {
  json j;
  try {
    j = json::parse(status_json);
  } catch (const json::exception& e) {
    throw Error(std::string("status is not JSON: ") + e.what());
  }
  Writer w;
  w.family("policy_version", "gauge", "Policy version the coordinator publishes (= applied steps).");
  w.sample("policy_version", num(j, "version"));
  w.family("steps_total", "gauge", "Steps the round runs.");
  w.sample("steps_total", num(j, "steps_total"));
  w.family("round_finished", "gauge", "1 once the last step is applied.");
  w.sample("round_finished", num(j, "finished"));
  w.family("uptime_seconds", "gauge", "Seconds since this coordinator process started.");
  w.sample("uptime_seconds", num(j, "uptime_s"));
  w.family("active_leases", "gauge", "Leases issued and not yet returned.");
  w.sample("active_leases", num(j, "active_leases"));
  w.family("peers_connected", "gauge", "Peers with an open session.");
  w.sample("peers_connected", num(j, "connected"));
  w.family("leases_started", "gauge", "1 once min_peers peers were connected and leases began.");
  w.sample("leases_started", num(j, "leases_started"));
  w.family("banned_peers", "gauge", "Peers banned for misbehaviour.");
  w.sample("banned_peers", num(j, "banned"));
  w.family("audits_total", "counter",
           "Updates drawn for an audit (recomputed in full by the coordinator or a validator).");
  w.sample("audits_total", num(j, "audits"));
  if (auto v = j.find("validation"); v != j.end() && v->is_object()) {
    w.family("validator_audits_total", "counter",
             "Validator-round audits by who decided them: a validator alone, or the coordinator's own "
             "recomputation as a spot check, to settle a disagreement, or for want of a validator.");
    w.sample("validator_audits_total", num(*v, "by_validators"), "decided_by=\"validator\"");
    w.sample("validator_audits_total", num(*v, "spot_checks"), "decided_by=\"spot_check\"");
    w.sample("validator_audits_total", num(*v, "disagreements"), "decided_by=\"disagreement\"");
    w.sample("validator_audits_total", num(*v, "fallbacks"), "decided_by=\"fallback\"");
    w.family("audits_waiting", "gauge", "Audits waiting for a validator, and out with one.");
    w.sample("audits_waiting", num(*v, "waiting"), "state=\"waiting\"");
    w.sample("audits_waiting", num(*v, "out"), "state=\"out\"");
    w.family("coordinator_audit_seconds_total", "counter",
             "Compute the coordinator spent recomputing leases for audits.");
    w.sample("coordinator_audit_seconds_total", num(*v, "coordinator_audit_s"));
  }
  if (auto c = j.find("connections"); c != j.end() && c->is_object()) {
    w.family("connections_total", "counter",
             "TCP connections accepted, and how their handshakes ended or why they were closed first.");
    for (const auto& [k, v] : c->items())
      if (v.is_number()) w.sample("connections_total", v.get<double>(), "result=\"" + k + "\"");
  }

  if (auto s = j.find("steps"); s != j.end() && s->is_array() && !s->empty()) {
    const json& last = s->back();
    w.family("step_reward_mean", "gauge", "Mean reward of the last applied step.");
    w.sample("step_reward_mean", num(last, "reward_mean"));
    w.family("step_accuracy", "gauge", "Accuracy of the last applied step's completions.");
    w.sample("step_accuracy", num(last, "accuracy"));
    w.family("step_loss", "gauge", "GRPO loss of the last applied step.");
    w.sample("step_loss", num(last, "loss"));
    w.family("step_grad_norm", "gauge", "Norm of the last applied step's mean gradient (before clipping).");
    w.sample("step_grad_norm", num(last, "grad_norm"));
    w.family("step_updates", "gauge", "Updates aggregated into the last applied step.");
    w.sample("step_updates", num(last, "updates"));
    w.family("step_completion_tokens_mean", "gauge", "Mean completion length (tokens) of the last applied step.");
    w.sample("step_completion_tokens_mean", num(last, "completion_len"));
    w.family("step_update_bytes", "gauge", "Bytes of the updates accepted for the last applied step.");
    w.sample("step_update_bytes", num(last, "bytes_up"));
    w.family("step_seconds", "gauge", "Coordinator time of the last step by phase.");
    w.sample("step_seconds", num(last, "aggregate_s"), "phase=\"aggregate\"");
    w.sample("step_seconds", num(last, "optimizer_s"), "phase=\"optimizer\"");
    w.sample("step_seconds", num(last, "publish_s"), "phase=\"publish\"");
  }
  if (auto e = j.find("evals"); e != j.end() && e->is_array() && !e->empty()) {
    w.family("heldout_accuracy", "gauge", "Held-out accuracy of the latest evaluation.");
    w.sample("heldout_accuracy", num(e->back(), "accuracy"));
  }
  if (auto r = j.find("refusals"); r != j.end() && r->is_object()) {
    w.family("refusals_total", "counter", "Refused updates (and connections, kind=\"connection\") by reason.");
    for (const auto& [reason, n] : r->items()) {
      const bool conn = reason.rfind("connection:", 0) == 0;
      const std::string why = conn ? reason.substr(11) : reason;
      w.sample("refusals_total", n.is_number() ? n.get<double>() : 0,
               "kind=\"" + std::string(conn ? "connection" : "update") + "\",reason=\"" + label_value(why) + "\"");
    }
  }
  if (auto p = j.find("peers"); p != j.end() && p->is_object()) {
    // A family's samples stay together, so each peer's labels are built once and used twice.
    std::vector<std::pair<std::string, const json*>> peers;
    for (const auto& [id, v] : p->items())
      peers.emplace_back("peer=\"" + label_value(id.substr(0, 16)) + "\",name=\"" +
                             label_value(v.value("name", std::string())) + "\"",
                         &v);
    w.family("peer_updates_total", "counter", "Updates per peer by result.");
    for (const auto& [l, v] : peers) {
      w.sample("peer_updates_total", num(*v, "accepted"), l + ",result=\"accepted\"");
      w.sample("peer_updates_total", num(*v, "refused"), l + ",result=\"refused\"");
    }
    w.family("peer_throughput_groups_per_second", "gauge", "Measured throughput per peer (EMA).");
    for (const auto& [l, v] : peers) w.sample("peer_throughput_groups_per_second", num(*v, "throughput_groups_per_s"), l);
    w.family("peer_credit_tokens_total", "counter",
             "Completion tokens per peer in updates that passed every check (credit).");
    for (const auto& [l, v] : peers) w.sample("peer_credit_tokens_total", num(*v, "credit_tokens"), l);
    w.family("peer_credit_groups_total", "counter",
             "Prompt groups per peer in updates that passed every check (credit).");
    for (const auto& [l, v] : peers) w.sample("peer_credit_groups_total", num(*v, "credit_groups"), l);
    w.family("peer_validations_total", "counter",
             "Audits per peer recomputed as a validator whose reports held.");
    for (const auto& [l, v] : peers) w.sample("peer_validations_total", num(*v, "validations"), l);
    w.family("peer_banned", "gauge", "1 for a peer banned for misbehaviour.");
    for (const auto& [l, v] : peers) w.sample("peer_banned", num(*v, "banned"), l);
  }
  return w.str();
}

}  // namespace cohort::coordinator
