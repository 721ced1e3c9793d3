// The round's settings as both roles see them: the coordinator writes them into every JoinReply
// (make_round_settings) and a node reads them back (read_round_settings), field by field, typed
// (protocol/messages.proto, RoundSettings). A node cannot trust a coordinator to be well-formed
// either: a missing or out-of-range value is a SettingsError naming the field, never a crash.
//
//   wire::RoundSettings s = make_round_settings(round);          // coordinator
//   RoundSpec spec = read_round_settings(s);                      // node: throws SettingsError
//   spec.grpo.group_size; spec.model.hidden_size; spec.dataset->name;
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/check.h"
#include "grpo/config.h"
#include "grpo/grpo_config.h"
#include "protocol/messages.pb.h"

namespace cohort::exchange {

// A round setting a node cannot use; the message names the field ("task_settings.digits") and
// the node ends with exit code 1.
class SettingsError : public Error {
 public:
  SettingsError(const std::string& field, const std::string& why)
      : Error("round setting '" + field + "' " + why +
                  "; the coordinator's round is misconfigured "
                  "or speaks another version of the protocol",
              1),
        field_(field) {}
  [[nodiscard]] const std::string& field() const { return field_; }

 private:
  std::string field_;
};

// A file every peer must hold byte for byte (it brings its own copy).
struct SharedFile {
  std::string name;     // file name only
  std::string blake2b;  // BLAKE2b-256, 64 hex digits
};

// Everything the settings carry, typed.
struct RoundSpec {
  std::string round_id;
  std::string model_name;  // diagnostic
  grpo::GrpoConfig grpo;   // task, sampling, loss, advantage scale, micro_batch, ...
  grpo::ModelConfig model;
  std::string model_config_json;  // as sent (config.json)
  uint32_t staleness_bound = 0;
  wire::Codec codec = wire::CODEC_FP8_E4M3_BLOCK;
  std::optional<SharedFile> dataset;        // JSONL rounds
  std::vector<SharedFile> tokenizer_files;  // Hugging Face models: tokenizer.json, ...
  std::string system_prompt;                // with tokenizer_files
  wire::DType policy_dtype = wire::DTYPE_F32;  // what the policy is published in (F32 or BF16)
};

// Coordinator side. spec.model is ignored (model_config_json is sent as is).
[[nodiscard]] wire::RoundSettings make_round_settings(const RoundSpec& spec);

// Node side: every field checked against the ranges of docs/PROTOCOL.md ("Round settings").
// Throws SettingsError naming the first bad field.
[[nodiscard]] RoundSpec read_round_settings(const wire::RoundSettings& s);

}  // namespace cohort::exchange
