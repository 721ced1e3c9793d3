// Invariant checks and typed errors shared by every module.
// COHORT_CHECK guards broken invariants (a bug): it prints file and line and aborts.
// Errors a caller can meet (bad input, I/O, a peer's misbehaviour) are cohort::Error.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace cohort {

// An error a user or caller can act on; the message says what went wrong and how to fix it.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void check_failed(const char* expr, const char* file, int line,
                                      const std::string& msg) {
  std::fprintf(stderr, "%s:%d: COHORT_CHECK(%s) failed%s%s\n", file, line, expr,
               msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace cohort

#define COHORT_CHECK(cond, ...)                                                        \
  do {                                                                                 \
    if (!(cond)) ::cohort::check_failed(#cond, __FILE__, __LINE__, std::string{__VA_ARGS__}); \
  } while (0)
