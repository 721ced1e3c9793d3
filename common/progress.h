// A one-line progress bar for long work, redrawn in place on a terminal and silent otherwise
// (logs and CI stay clean; machine-readable output goes to JSON, not here).
//
//   Progress bar("train", steps);
//   bar.update(step, "reward 0.41  acc 0.38");
//   bar.finish();
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace cohort {

class Progress {
 public:
  Progress(std::string label, long total)
      : label_(std::move(label)), total_(total), tty_(isatty(STDERR_FILENO) == 1),
        start_(std::chrono::steady_clock::now()) {}
  ~Progress() { finish(); }

  void update(long done, const std::string& status) {
    if (!tty_) return;
    constexpr int kWidth = 24;
    const double frac = total_ > 0 ? double(done) / double(total_) : 0.0;
    const int filled = static_cast<int>(frac * kWidth + 0.5);
    const double elapsed = seconds();
    const double eta = done > 0 ? elapsed * double(total_ - done) / double(done) : 0.0;
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(stderr, "\r\033[K%s [%s] %ld/%ld  %s  %.0fs (eta %.0fs)", label_.c_str(),
                 bar.c_str(), done, total_, status.c_str(), elapsed, eta);
    std::fflush(stderr);
    drawn_ = true;
  }
  void finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string label_;
  long total_;
  bool tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace cohort
