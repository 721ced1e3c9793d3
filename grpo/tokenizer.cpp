#include "grpo/tokenizer.h"

#include <filesystem>

#include "common/check.h"
#include "grpo/bpe_tokenizer.h"

namespace cohort::grpo {
namespace {
constexpr const char* kSpecials[] = {"<pad>", "<bos>", "<eos>", "<think>", "</think>",
                                     "<answer>", "</answer>"};
constexpr std::string_view kChars = "0123456789+-*/()=,: ";
}  // namespace

CharTokenizer::CharTokenizer() {
  for (const char* s : kSpecials) pieces_.emplace_back(s);
  for (auto& id : char_to_id_) id = -1;
  for (char c : kChars) {
    char_to_id_[static_cast<unsigned char>(c)] = static_cast<int64_t>(pieces_.size());
    pieces_.emplace_back(1, c);
  }
  COHORT_CHECK(static_cast<int64_t>(pieces_.size()) <= vocab_size());
}

std::vector<int64_t> CharTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] == '<') {
      bool matched = false;
      for (size_t s = 3; s < std::size(kSpecials); ++s) {  // <pad>/<bos>/<eos> are not text
        std::string_view sp = kSpecials[s];
        if (text.substr(i, sp.size()) == sp) {
          ids.push_back(static_cast<int64_t>(s));
          i += sp.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
    }
    int64_t id = char_to_id_[static_cast<unsigned char>(text[i])];
    if (id < 0)
      throw Error("character '" + std::string(1, text[i]) + "' is not in the task vocabulary");
    ids.push_back(id);
    ++i;
  }
  return ids;
}

std::string CharTokenizer::decode(std::span<const int64_t> ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (id == pad_id() || id == bos_id() || id == eos_id()) continue;
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size())) continue;  // unused ids render empty
    out += pieces_[id];
  }
  return out;
}

std::vector<int64_t> Tokenizer::encode_prompt(std::string_view text) const {
  std::vector<int64_t> ids;
  if (bos_id() >= 0) ids.push_back(bos_id());
  auto body = encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  if (name == "chars" || name.rfind("chars:", 0) == 0) return std::make_unique<CharTokenizer>();
  if (std::filesystem::exists(std::filesystem::path(name) / "tokenizer.json"))
    return BpeTokenizer::from_folder(name);
  throw Error("unknown tokenizer '" + name + "'");
}

const char* const kR1SystemPrompt =
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process "
    "here </think> <answer> answer here </answer>.";

std::unique_ptr<Tokenizer> tokenizer_for_model(const std::string& dir, const ModelConfig& cfg,
                                               const std::string& system_prompt) {
  if (!std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json")) {
    // Guessing would silently mis-tokenize a real model whose tokenizer files were left behind.
    if (cfg.tokenizer.empty())
      throw Error(dir + ": no tokenizer.json, and config.json names no built-in tokenizer "
                        "(cohort_tokenizer); copy the model's tokenizer.json and "
                        "tokenizer_config.json beside its config.json");
    return make_tokenizer(cfg.tokenizer);
  }
  auto tok = BpeTokenizer::from_folder(dir);
  if (system_prompt == "r1")
    tok->set_system_prompt(kR1SystemPrompt);
  else if (system_prompt != "default")
    tok->set_system_prompt(system_prompt);
  if (tok->vocab_size() > cfg.vocab_size)
    throw Error(dir + ": tokenizer has " + std::to_string(tok->vocab_size()) +
                " tokens but the model only " + std::to_string(cfg.vocab_size));
  tok->add_stop_ids(cfg.all_eos_token_ids());
  return tok;
}

ModelConfig task_model_config(const ModelConfig& shape) {
  ModelConfig c = shape;
  CharTokenizer tok;
  c.vocab_size = tok.vocab_size();
  c.bos_token_id = tok.bos_id();
  c.eos_token_id = tok.eos_id();
  c.pad_token_id = tok.pad_id();
  c.tokenizer = tok.name();
  return c;
}

}  // namespace cohort::grpo
