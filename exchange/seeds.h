// What makes a prompt group the same whichever peer draws it: the per-prompt sampling seed and
// the digest of a completion's token ids (docs/TASKS.md and docs/PROTOCOL.md specify both).
//
//   lease.add_seeds(prompt_seed(round_seed, prompt_index));
//   protocol::Digest d = completion_digest(token_ids);        // CompletionDigest.blake2b
#pragma once

#include <cstdint>
#include <span>

#include "protocol/digest.h"

namespace cohort::exchange {

// splitmix64 of (round seed, prompt index): depends on nothing else, so a group samples the same
// completions however a step is split into leases.
uint64_t prompt_seed(uint64_t round_seed, uint64_t prompt_index);

// BLAKE2b-256 of the token ids as u32 little-endian.
protocol::Digest completion_digest(std::span<const uint32_t> token_ids);
protocol::Digest completion_digest(std::span<const int64_t> token_ids);

}  // namespace cohort::exchange
