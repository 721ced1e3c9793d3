#include "grpo/grpo_config.h"

#include "common/check.h"

namespace cohort::grpo {

LossType parse_loss_type(const std::string& s) {
  if (s == "grpo") return LossType::grpo;
  if (s == "bnpo") return LossType::bnpo;
  if (s == "dapo") return LossType::dapo;
  if (s == "dr_grpo") return LossType::dr_grpo;
  throw Error("unknown loss '" + s + "' (expected grpo, bnpo, dapo or dr_grpo)");
}

const char* loss_type_name(LossType t) {
  switch (t) {
    case LossType::grpo:
      return "grpo";
    case LossType::bnpo:
      return "bnpo";
    case LossType::dapo:
      return "dapo";
    case LossType::dr_grpo:
      return "dr_grpo";
  }
  return "?";
}

AdvantageScale parse_advantage_scale(const std::string& s) {
  if (s == "group") return AdvantageScale::group;
  if (s == "batch") return AdvantageScale::batch;
  if (s == "none") return AdvantageScale::none;
  throw Error("unknown advantage scale '" + s + "' (expected group, batch or none)");
}

ImportanceLevel parse_importance_level(const std::string& s) {
  if (s == "token") return ImportanceLevel::token;
  if (s == "sequence") return ImportanceLevel::sequence;
  throw Error("unknown importance sampling level '" + s + "' (expected token or sequence)");
}

}  // namespace cohort::grpo
