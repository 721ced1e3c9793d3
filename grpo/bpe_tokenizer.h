// Byte-level BPE tokenizers read from a Hugging Face `tokenizer.json` (Qwen2/Qwen2.5/Qwen3,
// Llama 3, GPT-2 style), matching the reference `tokenizers` pipeline: added tokens are split
// out first (leftmost-longest), the rest is normalized (NFC where configured), pre-tokenized
// with the family's split regex (PCRE2, Unicode classes), mapped to byte-level characters and
// merged by rank. `tokenizer_config.json`, when present beside it, names bos/eos/pad tokens and
// carries the chat template, from which the chat family is recognized.
//
//   auto tok = BpeTokenizer::from_folder("Qwen2.5-0.5B-Instruct/");
//   std::vector<int64_t> ids = tok->encode("Natalia sold 48 clips.");
//   std::string text = tok->decode(ids);
//
// Text that is not valid UTF-8 is first decoded as the WHATWG/`TextDecoder` decoder does
// (each maximal invalid subpart becomes U+FFFD), since the reference only accepts strings.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "grpo/chat_template.h"
#include "grpo/tokenizer.h"

namespace cohort::grpo {

struct AddedToken {
  int64_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false;
};

class BpeTokenizer final : public Tokenizer {
 public:
  // Throws cohort::Error naming the file and the unsupported or malformed part.
  static std::unique_ptr<BpeTokenizer> from_json(const std::string& tokenizer_json,
                                                 const std::string& tokenizer_config_json = "");
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json.
  static std::unique_ptr<BpeTokenizer> from_folder(const std::string& dir);
  ~BpeTokenizer() override;

  // Added tokens written in the text ("<|im_start|>") become their ids; no BOS is prepended.
  std::vector<int64_t> encode(std::string_view text) const override;
  // Skips pad/bos/eos; other special tokens render as their text. Unknown ids render empty.
  std::string decode(std::span<const int64_t> ids) const override;
  // Renders every id, special or not (the reference's skip_special_tokens=false).
  std::string decode_all(std::span<const int64_t> ids) const;

  int64_t vocab_size() const override;  // largest id + 1
  int64_t pad_id() const override { return pad_id_; }
  int64_t bos_id() const override { return bos_id_; }  // -1 when the model has none (Qwen)
  int64_t eos_id() const override { return eos_id_; }
  std::string name() const override { return "bpe"; }

  // The prompt in the model's chat format when tokenizer_config.json has a template of a
  // supported family: [system turn,] user turn with `text`, generation prompt. Without a
  // template: <bos> (when the model has one) + text. Throws cohort::Error when the template is
  // of no supported family.
  std::vector<int64_t> encode_prompt(std::string_view text) const override;
  // EOS plus the family's end-of-turn tokens present in the vocabulary (<|im_end|>,
  // <|endoftext|>, <|eot_id|>, <|eom_id|>, <|end_of_text|>).
  std::vector<int64_t> stop_ids() const override;
  // More ids that end a completion (config.json's eos_token_id list).
  void add_stop_ids(const std::vector<int64_t>& ids);

  // The system turn of every prompt; nullopt: the template's default (Qwen2.5: "You are Qwen…").
  void set_system_prompt(std::optional<std::string> system) { system_ = std::move(system); }
  const ChatFormat& chat_format() const { return chat_; }

  std::optional<int64_t> token_id(std::string_view token) const;  // vocabulary or added token
  const std::vector<AddedToken>& added_tokens() const;
  // The Jinja chat template from tokenizer_config.json (empty when absent).
  const std::string& chat_template() const;

 private:
  BpeTokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t pad_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  std::vector<int64_t> extra_stops_;
  ChatFormat chat_;
  std::optional<std::string> system_;
};

// Replaces every maximal invalid UTF-8 subpart with U+FFFD (the WHATWG decoder's rule).
std::string sanitize_utf8(std::string_view bytes);

}  // namespace cohort::grpo
