// The two clocks every module reads: wall time in Unix milliseconds (what goes on the wire and in
// the ledger) and monotonic seconds (durations, deadlines inside one process).
//
//   const int64_t t = unix_ms();          // lease deadlines, ledger timestamps
//   const double t0 = mono_s(); ...; const double took = mono_s() - t0;
#pragma once

#include <chrono>
#include <cstdint>

namespace cohort {

inline int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

inline double mono_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace cohort
