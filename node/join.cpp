#include "node/join.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <tuple>

#include "common/check.h"
#include "common/file.h"
#include "exchange/blob_store.h"
#include "node/weight_sync.h"
#include "protocol/digest.h"

namespace cohort::node {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The status document can be large (a peer entry each): far above a card, still bounded.
constexpr uint64_t kMaxStatusBytes = 256ull << 20;

fs::path xdg_dir(const char* variable, const char* fallback) {
  // The XDG Base Directory rules: a relative value is ignored.
  if (const char* v = std::getenv(variable); v && *v == '/') return fs::path(v) / "cohort";
  const char* home = std::getenv("HOME");
  if (!home || !*home)
    throw Error(std::string("neither $") + variable + " nor $HOME is set: give the folder explicitly");
  return fs::path(home) / fallback / "cohort";
}

std::string digest_hex_of_file(const fs::path& p) {
  return exchange::digest_hex(protocol::blake2b_256_file(p.string()));
}

// GET `url` (http:// only), its body as long as it stays within `max_bytes`; `what` names it in
// errors. Throws cohort::Error.
std::string http_get_text(const std::string& url, uint64_t max_bytes, const std::string& what) {
  auto [origin, path] = split_url(url);
  httplib::Client cli(origin);
  if (!cli.is_valid()) throw Error(what + " " + url + " is not a URL this node can fetch");
  cli.set_connection_timeout(10, 0);
  cli.set_read_timeout(30, 0);
  cli.set_follow_location(true);
  std::string body;
  auto res = cli.Get(path.empty() ? "/" : path, [&](const char* data, size_t n) {
    body.append(data, n);
    return body.size() <= max_bytes;  // a server sending more is not serving what was asked
  });
  if (!res) throw Error(what + " " + url + ": " + httplib::to_string(res.error()));
  if (res->status != 200)
    throw Error(what + " " + url + ": HTTP " + std::to_string(res->status) +
                (res->status == 404 ? " (is this the coordinator's status address?)" : ""));
  return body;
}

std::string read_card_text(const std::string& where) {
  if (where.starts_with("https://"))
    throw Error("this build fetches cards over http:// only: download the card (e.g. with curl) "
                "and give its file, whose signature is checked the same way");
  if (where.starts_with("http://")) {
    // A URL without a path names the coordinator's card: /round.
    return http_get_text(split_url(where).second.empty() ? where + "/round" : where,
                         exchange::kMaxRoundCardBytes, "round card");
  }
  std::error_code ec;
  const auto size = fs::file_size(where, ec);
  if (ec) throw Error("round card " + where + ": " + ec.message());
  if (size > exchange::kMaxRoundCardBytes) throw Error("round card " + where + " is over 1 MiB: not a card");
  return read_file(where);
}

// The key a round id was first joined with (trust on first use), remembered in
// <config>/known_rounds.json; a later card for that round signed by another key is refused.
void check_known_key(const fs::path& config_dir, const exchange::RoundCard& card) {
  const fs::path file = config_dir / "known_rounds.json";
  json known = json::object();
  if (fs::exists(file)) {
    try {
      known = json::parse(std::ifstream(file));
    } catch (const json::exception& e) {
      throw Error(file.string() + " is not JSON (" + e.what() + "): fix or remove it");
    }
  }
  if (auto it = known.find(card.round_id); it != known.end() && it->is_string()) {
    if (it->get<std::string>() != card.coordinator_key)
      throw Error("round card: round '" + card.round_id + "' was first joined with coordinator key " +
                      it->get<std::string>() + " but this card is signed by " + card.coordinator_key +
                      ": refusing (a forged card, or the operator changed keys: check with them, "
                      "then pass --coordinator-key or edit " + file.string() + ")",
                  2);
    return;
  }
  spdlog::warn("node: first use of round '{}': trusting coordinator key {} (fingerprint {}); "
               "remembered in {}. Compare it with the key the round's operator publishes.",
               card.round_id, card.coordinator_key, card.coordinator_key.substr(0, 12), file.string());
  known[card.round_id] = card.coordinator_key;
  fs::create_directories(config_dir);
  // Written aside and renamed: an interrupted write never leaves half a file of trusted keys.
  write_file_atomic(file.string(), known.dump(2) + "\n");
}

// A file of the card in <cache>/blobs/<blake2b>: kept when already there and intact, else
// fetched from its sources in order, appended to <blake2b>.part (so an interrupted fetch resumes
// where it stopped), and renamed once its digest matches. Returns the bytes downloaded.
uint64_t ensure_file(const fs::path& blobs, const exchange::CardFile& f, fs::path& out) {
  out = blobs / f.blake2b;
  if (fs::exists(out)) {
    if (fs::file_size(out) == f.size && digest_hex_of_file(out) == f.blake2b) {
      spdlog::info("node: {} {}: cached ({} bytes)", f.role, f.name, f.size);
      return 0;
    }
    spdlog::warn("node: cached {} {} is damaged; fetching it again", f.role, f.name);
    fs::remove(out);
  }
  const fs::path part = blobs / (f.blake2b + ".part");
  uint64_t fetched = 0;
  std::string why;
  for (const std::string& base : f.sources) {
    try {
      uint64_t have = fs::exists(part) ? fs::file_size(part) : 0;
      if (have > f.size) {
        fs::remove(part);
        have = 0;
      }
      if (have > 0) spdlog::info("node: {} {}: resuming at byte {} of {}", f.role, f.name, have, f.size);
      std::ofstream o(part, std::ios::binary | std::ios::app);
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t last_report = have;
      while (have < f.size) {
        const uint64_t n = std::min(kHttpRangeBytes, f.size - have);
        const std::string bytes = http_blob_range(base, f.blake2b, have, n);
        o.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        o.flush();
        if (!o) throw Error("cannot write " + part.string());
        have += n;
        fetched += n;
        if (have - last_report >= 16 * kHttpRangeBytes && have < f.size) {
          const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          spdlog::info("node: {} {}: {:.1f} of {:.1f} MiB ({:.1f} MiB/s)", f.role, f.name,
                       double(have) / (1 << 20), double(f.size) / (1 << 20),
                       s > 0 ? double(fetched) / (1 << 20) / s : 0.0);
          last_report = have;
        }
      }
      o.close();
      if (digest_hex_of_file(part) != f.blake2b) {
        fs::remove(part);  // a bad byte may be anywhere in it: start over from the next source
        throw Error("its bytes do not match the card's BLAKE2b");
      }
      fs::rename(part, out);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      spdlog::info("node: {} {}: fetched {} bytes from {} ({:.1f} s)", f.role, f.name, fetched, base, s);
      return fetched;
    } catch (const std::exception& e) {
      why += "\n  " + base + ": " + e.what();
    }
  }
  throw Error("cannot fetch " + f.role + " " + f.name + " (" + std::to_string(f.size) +
              " bytes) from any source the card names:" + why);
}

// Round ids become folder names: anything but [A-Za-z0-9._-] is replaced.
std::string folder_name(const std::string& id) {
  std::string s;
  for (char c : id) s += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_';
  if (s.empty() || s == "." || s == "..") s = "round";
  return s;
}

}  // namespace

std::string peer_status_text(const std::string& round, const std::string& me) {
  std::string url = round;
  if (!round.starts_with("http://") || round.ends_with("/round")) {
    url = exchange::read_round_card(read_card_text(round)).status_url;
  } else if (!round.ends_with("/status")) {
    while (!url.empty() && url.back() == '/') url.pop_back();
    url += "/status";
  }
  if (!url.starts_with("http://")) throw Error("status URL " + url + ": only http:// is fetched");
  json j;
  try {
    j = json::parse(http_get_text(url, kMaxStatusBytes, "status"));
  } catch (const json::exception& e) {
    throw Error("status " + url + " is not JSON: " + e.what());
  }
  std::string out = fmt::format("round {} (step {} of {}), {}\nthis node {}…: ", j.value("round_id", "?"),
                                j.value("step", 0), j.value("steps_total", 0), url, me.substr(0, 16));
  const auto peers = j.find("peers");
  if (peers == j.end() || !peers->is_object() || !peers->contains(me))
    return out + "not seen in this round yet";
  const json& p = (*peers)[me];
  const double tokens = p.value("credit_tokens", 0.0);
  int rank = 1;
  for (const auto& [k, v] : peers->items())
    if (k != me && v.is_object() && v.value("credit_tokens", 0.0) > tokens) ++rank;
  out += fmt::format("credit {:.0f} completion tokens, {} groups (rank {} of {}); {} updates accepted, {} refused",
                     tokens, p.value("credit_groups", int64_t{0}), rank, peers->size(),
                     p.value("accepted", int64_t{0}), p.value("refused", int64_t{0}));
  if (auto r = p.find("refused_reasons"); r != p.end() && r->is_object() && !r->empty()) {
    std::string reasons;
    for (const auto& [k, v] : r->items())
      reasons += (reasons.empty() ? "" : ", ") + k + " " + std::to_string(v.is_number() ? v.get<int64_t>() : 0);
    out += " (" + reasons + ")";
  }
  if (p.value("banned", false)) out += "; BANNED";
  const int64_t now = j.value("now_ms", int64_t{0}), seen = p.value("last_seen_ms", int64_t{0});
  if (now > 0 && seen > 0) out += fmt::format("; last seen {:.0f} s ago", double(now - seen) / 1000);
  return out;
}

fs::path default_cache_dir() { return xdg_dir("XDG_CACHE_HOME", ".cache"); }
fs::path default_config_dir() { return xdg_dir("XDG_CONFIG_HOME", ".config"); }
fs::path default_key_file() { return default_config_dir() / "node.key"; }

JoinedRound join_round(const JoinOptions& o) {
  const fs::path cache = o.cache_dir.empty() ? default_cache_dir() : o.cache_dir;
  const fs::path config = o.config_dir.empty() ? default_config_dir() : o.config_dir;
  JoinedRound r;
  r.card = exchange::read_round_card(read_card_text(o.card));
  const exchange::RoundCard& c = r.card;
  if (!o.coordinator_key.empty()) {
    if (o.coordinator_key != c.coordinator_key)
      throw Error("round card: signed by " + c.coordinator_key + ", not by the pinned --coordinator-key " +
                      o.coordinator_key + ": refusing it",
                  2);
  } else {
    check_known_key(config, c);
  }
  spdlog::info("node: round '{}': model {} ({} parameters, {}), task {}, codec {}{}; status {}",
               c.round_id, c.model_name,
               c.parameters >= 1000000 ? fmt::format("{:.1f} M", double(c.parameters) / 1e6)
                                       : std::to_string(c.parameters),
               c.policy_dtype, c.task,
               c.gradient_codec, c.kl_beta > 0 ? fmt::format(", KL beta {}", c.kl_beta) : "",
               c.status_url);
  // read_round_card checked every address; the node connects to the first.
  const auto address = exchange::split_host_port(c.addresses.front());
  COHORT_CHECK(address.has_value(), "a checked card's address parses");
  std::tie(r.host, r.port) = *address;

  const fs::path blobs = cache / "blobs";
  fs::create_directories(blobs);
  // The card says how much will come: refuse before downloading what the disk cannot hold.
  uint64_t missing = 0;
  for (const auto& f : c.files)
    if (!fs::exists(blobs / f.blake2b)) missing += f.size;
  if (const fs::space_info space = fs::space(blobs); missing > space.available)
    throw Error(fmt::format("the round's files need {:.1f} MiB in {} and only {:.1f} MiB are free: free "
                            "some space or give another --cache-dir",
                            double(missing) / (1 << 20), blobs.string(), double(space.available) / (1 << 20)));
  const fs::path round_dir = cache / "rounds" / folder_name(c.round_id);
  for (const auto& f : c.files) {
    fs::path at;
    r.fetched_bytes += ensure_file(blobs, f, at);
    if (f.role == "dataset") {
      r.dataset = at.string();
    } else {
      // Tokenizer files are read from a folder by name: linked there from the blob.
      const fs::path dir = round_dir / "tokenizer";
      fs::create_directories(dir);
      const fs::path link = dir / f.name;
      std::error_code ec;
      fs::remove(link, ec);
      fs::create_hard_link(at, link, ec);
      if (ec) fs::copy_file(at, link, fs::copy_options::overwrite_existing);
      r.tokenizer_dir = dir.string();
    }
  }
  return r;
}

}  // namespace cohort::node
