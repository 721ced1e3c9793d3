// The reward statistics an update carries (GradientUpdate.rewards), computed one way for both
// roles: the node writes them from its rewards, the coordinator recomputes them from the rewards it
// re-scored and compares (docs/PROTOCOL.md, "Updates").
//
//   *update.mutable_rewards() = reward_stats(rewards);   // count, mean, population std, min, max
#pragma once

#include <span>

#include "protocol/messages.pb.h"

namespace cohort::exchange {

// Over the rewards in order, summed in double; all zero for an empty span.
[[nodiscard]] wire::RewardStats reward_stats(std::span<const float> rewards);

}  // namespace cohort::exchange
