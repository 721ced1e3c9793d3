// Tokenizers behind one interface: the built-in character tokenizer of the arith/countdown
// tasks, and byte-level BPE from a Hugging Face tokenizer.json (grpo/bpe_tokenizer.h).
//
//   auto tok = make_tokenizer("chars");
//   std::vector<int64_t> ids = tok->encode("12+34=");
//   std::string text = tok->decode(ids);
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "grpo/config.h"

namespace cohort::grpo {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Throws cohort::Error on text the vocabulary cannot represent.
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  // Special tokens other than pad/bos/eos are rendered as their text ("<answer>").
  virtual std::string decode(std::span<const int64_t> ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t pad_id() const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual std::string name() const = 0;
  // Token ids of a task prompt as the model sees it: <bos> + text here; chat models wrap the
  // text in their chat template (system prompt, user turn, generation prompt).
  virtual std::vector<int64_t> encode_prompt(std::string_view text) const;
  // Tokens that end a completion (EOS; chat models add their end-of-turn tokens).
  virtual std::vector<int64_t> stop_ids() const { return {eos_id()}; }
};

// The character vocabulary of the built-in tasks: <pad> <bos> <eos> <think> </think> <answer>
// </answer>, then the characters "0123456789+-*/()=,: ". Vocabulary size 32 (padded).
class CharTokenizer final : public Tokenizer {
 public:
  CharTokenizer();
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string decode(std::span<const int64_t> ids) const override;
  int64_t vocab_size() const override { return 32; }
  int64_t pad_id() const override { return 0; }
  int64_t bos_id() const override { return 1; }
  int64_t eos_id() const override { return 2; }
  std::string name() const override { return "chars"; }

 private:
  std::vector<std::string> pieces_;  // id -> text
  int64_t char_to_id_[256];
};

// The model config of the built-in tasks: `shape`'s sizes with the character tokenizer's
// vocabulary and special-token ids (what `cohort pretrain` builds; demo, benches and tests too).
ModelConfig task_model_config(const ModelConfig& shape = {});

// "chars" → CharTokenizer; a folder holding tokenizer.json → BpeTokenizer.
// Throws cohort::Error for an unknown name.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

// The R1-Zero instruction: reason in <think>, answer in <answer> (what r1_format_reward checks).
extern const char* const kR1SystemPrompt;

// The tokenizer a model folder was trained with: dir/tokenizer.json (+ tokenizer_config.json)
// when it has one (Hugging Face models), else the built-in tokenizer config.json names.
// system_prompt, for chat models: "r1" (kR1SystemPrompt), "default" (the chat template's own) or
// any text. Every EOS id config.json lists also ends completions. Throws cohort::Error when the
// tokenizer has more tokens than the model's vocabulary, or when the folder has no tokenizer.json
// and config.json names no built-in one.
std::unique_ptr<Tokenizer> tokenizer_for_model(const std::string& dir, const ModelConfig& cfg,
                                               const std::string& system_prompt = "r1");

}  // namespace cohort::grpo
