// Records the largest single operator-new allocation made while an AllocationProbe is alive
// (this test binary replaces the global operator new in alloc_probe.cpp).
#pragma once

#include <cstddef>

namespace cohort::protocol {

class AllocationProbe {
 public:
  AllocationProbe();
  ~AllocationProbe();
  [[nodiscard]] std::size_t max() const;
};

}  // namespace cohort::protocol
