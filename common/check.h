// Invariant checks and typed errors shared by every module: the project's one error policy.
//
// - Input from an untrusted peer (a message, an update, a setting) never throws past the code
//   that checks it: it yields a typed refusal value (e.g. exchange::Refusal, an Ack reason) that
//   the caller records and answers with.
// - Any other failure a caller or user can meet (bad input files or options, I/O, a coordinator
//   that refuses the node) throws cohort::Error or a subclass. An Error carries the process exit
//   code it should end with (1 unless said otherwise); no library or command code calls
//   std::exit: `main` catches std::exception, prints one line and returns the code.
// - A broken invariant (a bug) is COHORT_CHECK: it prints file and line and aborts.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace cohort {

// An error a user or caller can act on; the message says what went wrong and how to fix it.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  explicit Error(const char* message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  [[nodiscard]] int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_ = 1;
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
