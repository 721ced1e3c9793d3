#include "grpo/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <functional>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "common/check.h"
#include "common/file.h"

namespace cohort::grpo {
namespace {

using nlohmann::json;

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's reversible byte → printable character map: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order.
struct ByteLevelMap {
  std::array<std::string, 256> to_char;
  std::array<int, 324> to_byte;  // code point → byte, -1 when not a byte-level character
  ByteLevelMap() {
    to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      append_utf8(to_char[b], cp);
      to_byte[cp] = b;
    }
  }
};
const ByteLevelMap& byte_level() {
  static const ByteLevelMap m;
  return m;
}

// Decodes one code point of valid UTF-8 at s[i]; advances i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (s[i + k] & 0x3F);
  i += n;
  return cp;
}

bool is_numeric(uint32_t cp) {
  const int8_t t = u_charType(static_cast<UChar32>(cp));
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

std::string nfc(const std::string& s) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return s;
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* norm = unorm2_getNFCInstance(&err);
  if (U_FAILURE(err)) throw Error(std::string("ICU NFC normalizer unavailable: ") + u_errorName(err));
  int32_t len16 = 0;
  err = U_ZERO_ERROR;
  u_strFromUTF8(nullptr, 0, &len16, s.data(), static_cast<int32_t>(s.size()), &err);
  std::u16string in(static_cast<size_t>(len16), u'\0');
  err = U_ZERO_ERROR;
  u_strFromUTF8(reinterpret_cast<UChar*>(in.data()), len16, nullptr, s.data(),
                static_cast<int32_t>(s.size()), &err);
  if (U_FAILURE(err)) throw Error(std::string("UTF-8 → UTF-16 failed: ") + u_errorName(err));
  err = U_ZERO_ERROR;
  if (unorm2_isNormalized(norm, reinterpret_cast<const UChar*>(in.data()), len16, &err) &&
      U_SUCCESS(err))
    return s;
  err = U_ZERO_ERROR;
  int32_t out_len = unorm2_normalize(norm, reinterpret_cast<const UChar*>(in.data()), len16,
                                     nullptr, 0, &err);
  std::u16string out(static_cast<size_t>(out_len), u'\0');
  err = U_ZERO_ERROR;
  unorm2_normalize(norm, reinterpret_cast<const UChar*>(in.data()), len16,
                   reinterpret_cast<UChar*>(out.data()), out_len, &err);
  if (U_FAILURE(err)) throw Error(std::string("NFC normalization failed: ") + u_errorName(err));
  int32_t len8 = 0;
  err = U_ZERO_ERROR;
  u_strToUTF8(nullptr, 0, &len8, reinterpret_cast<const UChar*>(out.data()), out_len, &err);
  std::string result(static_cast<size_t>(len8), '\0');
  err = U_ZERO_ERROR;
  u_strToUTF8(result.data(), len8, nullptr, reinterpret_cast<const UChar*>(out.data()), out_len,
              &err);
  if (U_FAILURE(err)) throw Error(std::string("UTF-16 → UTF-8 failed: ") + u_errorName(err));
  return result;
}

// A compiled PCRE2 pattern with Unicode semantics (UTF + UCP: \s, \p{L}, \p{N} as Unicode).
class Regex {
 public:
  explicit Regex(const std::string& pattern) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error("tokenizer.json: pre-tokenizer regex does not compile at offset " +
                  std::to_string(offset) + ": " + reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // best effort; the interpreter is the fallback
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Splits `text` into matches and the gaps between them, in order (behavior "Isolated").
  void split_isolated(std::string_view text, std::vector<std::string>& out) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0, prev = 0;
    while (pos <= text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                           PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0], e = ov[1];
      if (b > prev) out.emplace_back(text.substr(prev, b - prev));
      if (e > b) out.emplace_back(text.substr(b, e - b));
      prev = e;
      if (e == b) {  // empty match: step one code point, as the reference does
        if (e >= text.size()) break;
        size_t i = e;
        next_code_point(text, i);
        pos = i;
      } else {
        pos = e;
      }
    }
    if (prev < text.size()) out.emplace_back(text.substr(prev));
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct PreTokenizerStep {
  enum Kind { split, byte_level, digits } kind;
  std::shared_ptr<Regex> regex;  // split, or byte_level with use_regex
  bool add_prefix_space = false;
  bool individual_digits = false;
};

}  // namespace

std::string sanitize_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out += static_cast<char>(b);
      ++i;
      continue;
    }
    int need = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t j = i + 1;
    int got = 0;
    while (got < need && j < n) {
      const auto c = static_cast<unsigned char>(s[j]);
      if (c < lo || c > hi) break;
      lo = 0x80;
      hi = 0xBF;
      ++j;
      ++got;
    }
    if (got == need) {
      out.append(s.substr(i, j - i));
    } else {
      out += "\xEF\xBF\xBD";  // the offending byte (if any) is examined afresh
    }
    i = j;
  }
  return out;
}

struct BpeTokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> id_to_token;  // byte-level strings; added tokens hold their content
  std::vector<bool> is_added;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (a,b) → (rank, merged)
  std::array<int64_t, 256> byte_id{};
  bool ignore_merges = false;
  bool normalize_nfc = false;
  std::vector<PreTokenizerStep> steps;
  std::vector<AddedToken> added;
  std::array<std::vector<const AddedToken*>, 256> added_by_first;  // longest first
  std::vector<int64_t> skip_on_decode;
  std::string chat_template;
  std::string chat_error;  // why the chat template is unusable, if it is

  void bpe(const std::string& word, std::vector<int64_t>& out) const {
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    std::vector<int64_t> sym;
    sym.reserve(word.size());
    const auto& bl = byte_level();
    size_t i = 0;
    while (i < word.size()) {
      const uint32_t cp = next_code_point(word, i);
      COHORT_CHECK(cp < bl.to_byte.size() && bl.to_byte[cp] >= 0);
      sym.push_back(byte_id[bl.to_byte[cp]]);
    }
    while (sym.size() > 1) {
      int32_t best_rank = std::numeric_limits<int32_t>::max(), merged = -1;
      size_t at = 0;
      for (size_t k = 0; k + 1 < sym.size(); ++k) {
        auto it = merges.find((static_cast<uint64_t>(sym[k]) << 32) | static_cast<uint64_t>(sym[k + 1]));
        if (it != merges.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          merged = it->second.second;
          at = k;
        }
      }
      if (merged < 0) break;
      // Merge every non-overlapping occurrence of the best pair, left to right: the same result
      // as merging them one at a time, since they share the lowest rank.
      const int64_t a = sym[at], b = sym[at + 1];
      size_t w = 0;
      for (size_t r = 0; r < sym.size();) {
        if (r + 1 < sym.size() && sym[r] == a && sym[r + 1] == b) {
          sym[w++] = merged;
          r += 2;
        } else {
          sym[w++] = sym[r++];
        }
      }
      sym.resize(w);
    }
    out.insert(out.end(), sym.begin(), sym.end());
  }

  std::string render(std::span<const int64_t> ids, bool skip) const;

  void encode_section(const std::string& raw, std::vector<int64_t>& out) const {
    std::string text = normalize_nfc ? nfc(raw) : raw;
    if (text.empty()) return;
    std::vector<std::string> pieces{std::move(text)}, next;
    for (const auto& step : steps) {
      next.clear();
      for (auto& p : pieces) {
        switch (step.kind) {
          case PreTokenizerStep::split:
            step.regex->split_isolated(p, next);
            break;
          case PreTokenizerStep::byte_level: {
            if (step.add_prefix_space && p.rfind(' ', 0) != 0) p.insert(p.begin(), ' ');
            if (step.regex) {
              // use_regex: the GPT-2 pattern keeps only matches (the gaps are empty for it).
              step.regex->split_isolated(p, next);
            } else {
              next.push_back(std::move(p));
            }
            break;
          }
          case PreTokenizerStep::digits: {
            // The reference's Digits: char::is_numeric (Unicode Nd, Nl, No, so "²" and "٣"
            // too), each digit alone (individual_digits) or in runs, isolated from the rest.
            size_t s = 0, k = 0;
            bool prev_numeric = false;
            while (k < p.size()) {
              const size_t at = k;
              const bool numeric = is_numeric(next_code_point(p, k));
              if (at > s && (numeric != prev_numeric || (numeric && step.individual_digits))) {
                next.push_back(p.substr(s, at - s));
                s = at;
              }
              prev_numeric = numeric;
            }
            if (p.size() > s) next.push_back(p.substr(s));
            break;
          }
        }
      }
      pieces.swap(next);
    }
    const auto& bl = byte_level();
    std::string mapped;
    for (const auto& p : pieces) {
      if (p.empty()) continue;
      mapped.clear();
      for (unsigned char c : p) mapped += bl.to_char[c];
      bpe(mapped, out);
    }
  }
};

BpeTokenizer::BpeTokenizer() : impl_(std::make_unique<Impl>()) {}
BpeTokenizer::~BpeTokenizer() = default;

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path tj = fs::path(dir) / "tokenizer.json";
  if (!fs::exists(tj))
    throw Error("no tokenizer.json in '" + dir + "' (byte-level BPE tokenizers are read from it)");
  const fs::path tc = fs::path(dir) / "tokenizer_config.json";
  try {
    return from_json(read_file(tj.string()), fs::exists(tc) ? read_file(tc.string()) : "");
  } catch (const Error& e) {
    throw Error(dir + ": " + e.what());
  }
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_json(const std::string& tokenizer_json,
                                                      const std::string& config_json) {
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  Impl& im = *tok->impl_;
  json j;
  try {
    j = json::parse(tokenizer_json);
  } catch (const json::exception& e) {
    throw Error(std::string("tokenizer.json is not valid JSON: ") + e.what());
  }
  try {
    const json& model = j.at("model");
    if (model.value("type", std::string("BPE")) != "BPE")
      throw Error("tokenizer.json: model type '" + model.value("type", std::string()) +
                  "' is not supported (only byte-level BPE)");
    if (model.contains("byte_fallback") && model["byte_fallback"].is_boolean() &&
        model["byte_fallback"].get<bool>())
      throw Error("tokenizer.json: byte_fallback (SentencePiece-style BPE) is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
        throw Error(std::string("tokenizer.json: BPE ") + key + " is not supported");
    im.ignore_merges = model.value("ignore_merges", false);

    for (auto& [token, id] : model.at("vocab").items()) {
      const int64_t i = id.get<int64_t>();
      if (i < 0 || i > (1 << 24)) throw Error("tokenizer.json: vocabulary id out of range");
      im.vocab.emplace(token, i);
      if (static_cast<int64_t>(im.id_to_token.size()) <= i) im.id_to_token.resize(i + 1);
      im.id_to_token[i] = token;
    }
    const auto& bl = byte_level();
    for (int b = 0; b < 256; ++b) {
      auto it = im.vocab.find(bl.to_char[b]);
      if (it == im.vocab.end())
        throw Error("tokenizer.json: the vocabulary lacks byte-level character for byte " +
                    std::to_string(b) + " (not a byte-level BPE)");
      im.byte_id[b] = it->second;
    }
    const json& merges = model.at("merges");
    int32_t rank = 0;
    for (const auto& m : merges) {
      std::string left, right;
      if (m.is_array() && m.size() == 2) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos) throw Error("tokenizer.json: malformed merge '" + s + "'");
        left = s.substr(0, sp);
        right = s.substr(sp + 1);
      } else {
        throw Error("tokenizer.json: malformed merge " + m.dump());
      }
      auto a = im.vocab.find(left), b = im.vocab.find(right), c = im.vocab.find(left + right);
      if (a == im.vocab.end() || b == im.vocab.end() || c == im.vocab.end())
        throw Error("tokenizer.json: merge '" + left + " " + right + "' names a token outside the vocabulary");
      const uint64_t key = (static_cast<uint64_t>(a->second) << 32) | static_cast<uint64_t>(b->second);
      im.merges.emplace(key, std::make_pair(rank, static_cast<int32_t>(c->second)));
      ++rank;
    }

    // Normalizer: none or NFC (Qwen2/3); anything else would silently change ids.
    std::function<void(const json&)> add_normalizer = [&](const json& n) {
      if (n.is_null()) return;
      const std::string type = n.value("type", std::string());
      if (type == "NFC") {
        im.normalize_nfc = true;
      } else if (type == "Sequence") {
        for (const auto& s : n.at("normalizers")) add_normalizer(s);
      } else {
        throw Error("tokenizer.json: normalizer '" + type + "' is not supported (only NFC)");
      }
    };
    add_normalizer(j.value("normalizer", json()));

    bool has_byte_level = false;
    std::function<void(const json&)> add_step = [&](const json& p) {
      if (p.is_null()) return;
      const std::string type = p.value("type", std::string());
      PreTokenizerStep step{PreTokenizerStep::split, nullptr};
      if (type == "Sequence") {
        for (const auto& s : p.at("pretokenizers")) add_step(s);
        return;
      } else if (type == "Split") {
        if (!p.at("pattern").contains("Regex"))
          throw Error("tokenizer.json: Split pre-tokenizer with a String pattern is not supported");
        if (p.value("behavior", std::string()) != "Isolated" || p.value("invert", false))
          throw Error("tokenizer.json: Split pre-tokenizer behaviour other than Isolated is not supported");
        step.regex = std::make_shared<Regex>(p["pattern"]["Regex"].get<std::string>());
      } else if (type == "ByteLevel") {
        step.kind = PreTokenizerStep::byte_level;
        step.add_prefix_space = p.value("add_prefix_space", false);
        if (p.value("use_regex", true)) step.regex = std::make_shared<Regex>(kGpt2Pattern);
        has_byte_level = true;
      } else if (type == "Digits") {
        step.kind = PreTokenizerStep::digits;
        step.individual_digits = p.value("individual_digits", false);
      } else {
        throw Error("tokenizer.json: pre-tokenizer '" + type + "' is not supported");
      }
      im.steps.push_back(std::move(step));
    };
    add_step(j.value("pre_tokenizer", json()));
    if (!has_byte_level)
      throw Error("tokenizer.json: no ByteLevel pre-tokenizer (only byte-level BPE is supported)");
    const json decoder = j.value("decoder", json());
    if (!decoder.is_null() && decoder.value("type", std::string()) != "ByteLevel")
      throw Error("tokenizer.json: decoder '" + decoder.value("type", std::string()) +
                  "' is not supported (only ByteLevel)");

    for (const auto& a : j.value("added_tokens", json::array())) {
      AddedToken t;
      t.id = a.at("id").get<int64_t>();
      t.content = a.at("content").get<std::string>();
      t.special = a.value("special", false);
      t.lstrip = a.value("lstrip", false);
      t.rstrip = a.value("rstrip", false);
      if (t.content.empty() || t.id < 0 || t.id > (1 << 24))
        throw Error("tokenizer.json: malformed added token " + a.dump());
      im.vocab[t.content] = t.id;
      if (static_cast<int64_t>(im.id_to_token.size()) <= t.id) im.id_to_token.resize(t.id + 1);
      im.id_to_token[t.id] = t.content;
      im.added.push_back(std::move(t));
    }
  } catch (const json::exception& e) {
    throw Error(std::string("tokenizer.json: missing or mistyped field: ") + e.what());
  }
  im.is_added.assign(im.id_to_token.size(), false);
  for (const auto& t : im.added) {
    im.is_added[t.id] = true;
    im.added_by_first[static_cast<unsigned char>(t.content[0])].push_back(&t);
  }
  for (auto& list : im.added_by_first)
    std::stable_sort(list.begin(), list.end(),
                     [](auto* a, auto* b) { return a->content.size() > b->content.size(); });

  // Special tokens and the chat template from tokenizer_config.json.
  if (!config_json.empty()) {
    json c;
    try {
      c = json::parse(config_json);
    } catch (const json::exception& e) {
      throw Error(std::string("tokenizer_config.json is not valid JSON: ") + e.what());
    }
    auto token = [&](const char* key) -> int64_t {
      if (!c.contains(key) || c[key].is_null()) return -1;
      std::string s = c[key].is_object() ? c[key].value("content", std::string())
                                         : c[key].is_string() ? c[key].get<std::string>() : "";
      auto id = tok->token_id(s);
      if (!id) throw Error("tokenizer_config.json: " + std::string(key) + " '" + s + "' is not a token");
      return *id;
    };
    tok->bos_id_ = token("bos_token");
    tok->eos_id_ = token("eos_token");
    tok->pad_id_ = token("pad_token");
    if (c.contains("chat_template") && c["chat_template"].is_string())
      im.chat_template = c["chat_template"].get<std::string>();
  }
  if (tok->pad_id_ < 0) tok->pad_id_ = tok->eos_id_;
  try {
    tok->chat_ = detect_chat_format(
        im.chat_template, tok->bos_id_ >= 0 ? im.id_to_token[tok->bos_id_] : std::string());
  } catch (const Error& e) {
    im.chat_error = e.what();  // only prompting fails: encode/decode stay usable
  }
  if (tok->bos_id_ >= 0) im.skip_on_decode.push_back(tok->bos_id_);
  if (tok->eos_id_ >= 0) im.skip_on_decode.push_back(tok->eos_id_);
  if (tok->pad_id_ >= 0) im.skip_on_decode.push_back(tok->pad_id_);
  return tok;
}

std::vector<int64_t> BpeTokenizer::encode(std::string_view input) const {
  const Impl& im = *impl_;
  const std::string text = sanitize_utf8(input);
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 1);
  // Added tokens first, leftmost-longest, on the raw text (they are never normalized here).
  size_t start = 0, i = 0;
  const AddedToken* prev_added = nullptr;
  auto flush = [&](size_t end, const AddedToken* next_added) {
    std::string_view section(text.data() + start, end - start);
    if (prev_added && prev_added->rstrip)
      while (!section.empty() && std::isspace(static_cast<unsigned char>(section.front())))
        section.remove_prefix(1);
    if (next_added && next_added->lstrip)
      while (!section.empty() && std::isspace(static_cast<unsigned char>(section.back())))
        section.remove_suffix(1);
    if (!section.empty()) im.encode_section(std::string(section), ids);
  };
  while (i < text.size()) {
    const AddedToken* match = nullptr;
    for (const AddedToken* t : im.added_by_first[static_cast<unsigned char>(text[i])])
      if (text.compare(i, t->content.size(), t->content) == 0) {
        match = t;
        break;
      }
    if (match == nullptr) {
      ++i;
      continue;
    }
    flush(i, match);
    ids.push_back(match->id);
    i += match->content.size();
    start = i;
    prev_added = match;
  }
  flush(text.size(), nullptr);
  return ids;
}

std::string BpeTokenizer::Impl::render(std::span<const int64_t> ids, bool skip) const {
  const Impl& im = *this;
  const auto& bl = byte_level();
  std::string out, bytes;
  auto flush = [&] {
    out += sanitize_utf8(bytes);
    bytes.clear();
  };
  for (int64_t id : ids) {
    if (id < 0 || id >= static_cast<int64_t>(im.id_to_token.size())) continue;
    if (skip && std::find(im.skip_on_decode.begin(), im.skip_on_decode.end(), id) !=
                    im.skip_on_decode.end())
      continue;
    const std::string& t = im.id_to_token[id];
    if (im.is_added[id]) {
      flush();
      out += t;
      continue;
    }
    size_t i = 0;
    while (i < t.size()) {
      const uint32_t cp = next_code_point(t, i);
      if (cp < bl.to_byte.size() && bl.to_byte[cp] >= 0) bytes += static_cast<char>(bl.to_byte[cp]);
    }
  }
  flush();
  return out;
}

std::string BpeTokenizer::decode(std::span<const int64_t> ids) const { return impl_->render(ids, true); }
std::string BpeTokenizer::decode_all(std::span<const int64_t> ids) const {
  return impl_->render(ids, false);
}

int64_t BpeTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

std::optional<int64_t> BpeTokenizer::token_id(std::string_view token) const {
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::vector<int64_t> BpeTokenizer::encode_prompt(std::string_view text) const {
  if (!impl_->chat_error.empty()) throw Error(impl_->chat_error);
  if (chat_.family == ChatFamily::none) return Tokenizer::encode_prompt(text);
  std::vector<ChatMessage> messages;
  if (system_) messages.push_back({"system", *system_});
  messages.push_back({"user", std::string(text)});
  return encode(render_chat(chat_, messages, /*add_generation_prompt=*/true));
}

std::vector<int64_t> BpeTokenizer::stop_ids() const {
  std::vector<int64_t> ids;
  if (eos_id_ >= 0) ids.push_back(eos_id_);
  for (const char* t : {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"})
    if (auto id = token_id(t); id && std::find(ids.begin(), ids.end(), *id) == ids.end())
      ids.push_back(*id);
  for (int64_t id : extra_stops_)
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

void BpeTokenizer::add_stop_ids(const std::vector<int64_t>& ids) {
  extra_stops_.insert(extra_stops_.end(), ids.begin(), ids.end());
}

const std::vector<AddedToken>& BpeTokenizer::added_tokens() const { return impl_->added; }
const std::string& BpeTokenizer::chat_template() const { return impl_->chat_template; }

}  // namespace cohort::grpo
