// A count sketch: a keyed random projection of a model-sized vector onto k buckets (each element
// added, with a keyed random sign, to one keyed random bucket). Inner products and norms of
// sketches estimate those of the vectors (unbiased; the cosine's error is about sqrt(2 / k)),
// so a validator reports its recomputed gradient as k floats instead of a whole gradient, and the
// coordinator sketches the reported gradient with the same key to compare them. The key is drawn
// per audit after the update arrived: the update's author cannot shape a gradient whose sketch
// matches without matching the gradient, and the validator never sees the reported gradient.
//
//   std::vector<float> s = count_sketch(gradient, key, 16384);
//   double c = cosine(s, count_sketch(reported, key, 16384));
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace cohort::exchange {

// Buckets of an audit's sketch when the round does not say otherwise (64 KiB of floats).
inline constexpr uint32_t kDefaultSketchSize = 16384;
// A report of the largest sketch (2 MiB of floats) stays well inside a 4 MiB bulk message.
inline constexpr uint32_t kMaxSketchSize = 1u << 19;

// Element i goes to bucket b(i) with sign s(i), both from splitmix64(key + i). k >= 1.
[[nodiscard]] std::vector<float> count_sketch(std::span<const float> x, uint64_t key, uint32_t k);

// Cosine of two vectors (sketches or dense): 1 when both are zero, 0 when one is.
[[nodiscard]] double cosine(std::span<const float> a, std::span<const float> b);

}  // namespace cohort::exchange
