#include "exchange/round_card.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

#include "exchange/blob_store.h"
#include "protocol/digest.h"

namespace cohort::exchange {
namespace {

using nlohmann::json;

constexpr size_t kMaxFiles = 64;
constexpr size_t kMaxList = 16;       // addresses, sources, mirrors
constexpr size_t kMaxString = 2048;   // any one string field inside the card

bool is_digest_hex(std::string_view s) { return parse_digest_hex(s).has_value(); }

// Parses JSON text, a CardError naming `what` when it is not JSON.
json parse_json(std::string_view text, const std::string& what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw CardError(what + "not JSON: " + e.what());
  }
}

// Typed access to the card's fields: a missing field or one of another type or out of range is a
// CardError naming it.
class Fields {
 public:
  Fields(const json& j, std::string where) : j_(j), where_(std::move(where)) {
    if (!j.is_object()) fail("", "must be an object");
  }
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    throw CardError("'" + where_ + (key.empty() ? "" : (where_.empty() ? "" : ".") + key) + "' " + why);
  }
  const json& at(const std::string& key) const {
    auto it = j_.find(key);
    if (it == j_.end()) fail(key, "is missing");
    return *it;
  }
  std::string text(const std::string& key, bool allow_empty = true, size_t max = kMaxString) const {
    const json& v = at(key);
    if (!v.is_string()) fail(key, "must be a string");
    std::string s = v.get<std::string>();
    if (s.size() > max) fail(key, "is longer than " + std::to_string(max) + " bytes");
    if (!allow_empty && s.empty()) fail(key, "must not be empty");
    return s;
  }
  uint64_t count(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0))
      fail(key, "must be a non-negative integer");
    return v.get<uint64_t>();
  }
  double number(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
      fail(key, "must be a finite non-negative number");
    return v.get<double>();
  }
  std::vector<std::string> texts(const std::string& key) const {
    const json& v = at(key);
    if (!v.is_array() || v.size() > kMaxList)
      fail(key, "must be a list of at most " + std::to_string(kMaxList) + " strings");
    std::vector<std::string> out;
    for (const json& e : v) {
      if (!e.is_string() || e.get<std::string>().empty() || e.get<std::string>().size() > kMaxString)
        fail(key, "must hold non-empty strings");
      out.push_back(e.get<std::string>());
    }
    return out;
  }

 private:
  const json& j_;
  std::string where_;
};

}  // namespace

std::optional<std::pair<std::string, uint16_t>> split_host_port(std::string_view a) {
  const auto colon = a.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  std::string_view host = a.substr(0, colon);
  const std::string_view port = a.substr(colon + 1);
  // A bare IPv6 address ("::1:7070") is ambiguous: it must be bracketed.
  if (host.front() == '[' && host.back() == ']' && host.size() > 2) host = host.substr(1, host.size() - 2);
  else if (host.find(':') != std::string_view::npos) return std::nullopt;
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)
    return std::nullopt;
  const int n = std::stoi(std::string(port));
  if (n < 1 || n > 65535) return std::nullopt;
  return std::pair{std::string(host), static_cast<uint16_t>(n)};
}

std::string sign_round_card(RoundCard c, const protocol::Identity& signer) {
  c.coordinator_key = signer.id().hex();
  json files = json::array();
  for (const auto& f : c.files)
    files.push_back({{"role", f.role}, {"name", f.name}, {"size", f.size},
                     {"blake2b", f.blake2b}, {"sources", f.sources}});
  const json card = {{"round_id", c.round_id},
                     {"coordinator_key", c.coordinator_key},
                     {"addresses", c.addresses},
                     {"status_url", c.status_url},
                     {"model", {{"name", c.model_name},
                                {"parameters", c.parameters},
                                {"policy_dtype", c.policy_dtype},
                                {"config_blake2b", c.config_blake2b}}},
                     {"task", c.task},
                     {"gradient_codec", c.gradient_codec},
                     {"kl_beta", c.kl_beta},
                     {"files", files},
                     {"requirements", {{"memory_bytes", c.memory_bytes},
                                       {"snapshot_bytes", c.snapshot_bytes},
                                       {"min_down_mbps", c.min_down_mbps},
                                       {"min_up_mbps", c.min_up_mbps}}},
                     {"mirrors", c.mirrors},
                     {"issued_ms", c.issued_ms}};
  const std::string body = card.dump(2);
  const protocol::Signature sig =
      signer.sign(protocol::signing_digest(kRoundCardDomain, protocol::as_bytes(body)));
  const json file = {{"format", kRoundCardFormat},
                     {"card", body},
                     {"signature", protocol::to_hex(protocol::ByteView(sig.data(), sig.size()))}};
  return file.dump(2) + "\n";
}

RoundCard read_round_card(std::string_view text) {
  const json file = parse_json(text, "");
  const Fields outer(file, "");
  if (outer.text("format") != kRoundCardFormat)
    outer.fail("format", "is not " + std::string(kRoundCardFormat) + " (a card from another version?)");
  const std::string body = outer.text("card", false, kMaxRoundCardBytes);
  const std::string sig_hex = outer.text("signature");
  const json j = parse_json(body, "'card' is ");
  const Fields f(j, "card");
  RoundCard c;
  c.coordinator_key = f.text("coordinator_key");
  if (!is_digest_hex(c.coordinator_key)) f.fail("coordinator_key", "must be 64 lowercase hex digits");
  // The signature first: nothing else in an unsigned card is worth reading.
  const auto sig = protocol::from_hex(sig_hex);
  if (!sig || sig->size() != protocol::kSignatureLen)
    outer.fail("signature", "must be 128 hex digits");
  if (!protocol::verify_signature(protocol::PeerId::parse(c.coordinator_key),
                                  protocol::signing_digest(kRoundCardDomain, protocol::as_bytes(body)),
                                  protocol::ByteView(sig->data(), sig->size())))
    throw CardError("the signature does not verify against the card's coordinator_key " +
                    c.coordinator_key.substr(0, 12) + ": the card was altered or forged");
  c.round_id = f.text("round_id", /*allow_empty=*/false);
  c.addresses = f.texts("addresses");
  if (c.addresses.empty()) f.fail("addresses", "must name at least one HOST:PORT");
  for (const auto& a : c.addresses)
    if (!is_host_port(a)) f.fail("addresses", "must hold HOST:PORT entries, port 1..65535 (got '" + a + "')");
  c.status_url = f.text("status_url");
  const Fields m(f.at("model"), "card.model");
  c.model_name = m.text("name");
  c.parameters = m.count("parameters");
  c.policy_dtype = m.text("policy_dtype", false);
  c.config_blake2b = m.text("config_blake2b");
  if (!is_digest_hex(c.config_blake2b)) m.fail("config_blake2b", "must be 64 lowercase hex digits");
  c.task = f.text("task", false);
  c.gradient_codec = f.text("gradient_codec", false);
  c.kl_beta = f.number("kl_beta");
  const json& files = f.at("files");
  if (!files.is_array() || files.size() > kMaxFiles)
    f.fail("files", "must be a list of at most " + std::to_string(kMaxFiles) + " files");
  std::set<std::pair<std::string, std::string>> seen;
  for (size_t i = 0; i < files.size(); ++i) {
    const Fields e(files[i], "card.files[" + std::to_string(i) + "]");
    CardFile cf;
    cf.role = e.text("role");
    if (cf.role != "dataset" && cf.role != "tokenizer") e.fail("role", "must be dataset or tokenizer");
    cf.name = e.text("name", false);
    // The node lays files out by name: a name that could leave its folder is refused.
    if (cf.name == "." || cf.name == ".." || cf.name.find('/') != std::string::npos ||
        cf.name.find('\\') != std::string::npos || cf.name.find('\0') != std::string::npos)
      e.fail("name", "must be a plain file name (got '" + cf.name + "')");
    if (!seen.insert({cf.role, cf.name}).second) e.fail("name", "names a file twice");
    cf.size = e.count("size");
    cf.blake2b = e.text("blake2b");
    if (!is_digest_hex(cf.blake2b)) e.fail("blake2b", "must be 64 lowercase hex digits");
    cf.sources = e.texts("sources");
    if (cf.sources.empty()) e.fail("sources", "must name at least one base URL");
    c.files.push_back(std::move(cf));
  }
  const Fields r(f.at("requirements"), "card.requirements");
  const json& mem = r.at("memory_bytes");
  if (!mem.is_object() || mem.size() > kMaxList) r.fail("memory_bytes", "must be an object");
  for (const auto& [k, v] : mem.items()) {
    if (!v.is_number_unsigned()) r.fail("memory_bytes", "must map precisions to byte counts");
    c.memory_bytes[k] = v.get<uint64_t>();
  }
  c.snapshot_bytes = r.count("snapshot_bytes");
  c.min_down_mbps = r.number("min_down_mbps");
  c.min_up_mbps = r.number("min_up_mbps");
  c.mirrors = f.texts("mirrors");
  const json& issued = f.at("issued_ms");
  if (!issued.is_number_integer()) f.fail("issued_ms", "must be an integer");
  c.issued_ms = issued.get<int64_t>();
  return c;
}

}  // namespace cohort::exchange
