// Volunteer controls (node/volunteer.h): /proc parsing against texts in the kernel's format, the
// share of the CPU other processes use, the idle watch against a real CPU burner, pause signals
// delivered through the pid file, and the status line.
#include "node/volunteer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/check.h"

namespace cohort::node {
namespace {

TEST(Volunteer, ParsesProcStatAndSelfStat) {
  // /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice.
  const auto s = parse_proc_stat("cpu  100 5 50 1000 20 3 2 0 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->total, 100u + 5 + 50 + 1000 + 20 + 3 + 2 + 0);  // guest time is inside user
  EXPECT_EQ(s->idle, 1020u);
  EXPECT_FALSE(parse_proc_stat("intr 12345\n").has_value());
  // A comm with spaces and a parenthesis: utime 11th and stime 12th field after the last ')'.
  const auto self = parse_self_stat("4242 (cohort (x) y) S 1 4242 4242 0 -1 4194560 900 0 3 0 77 23 0 0 20 0 9");
  ASSERT_TRUE(self.has_value());
  EXPECT_EQ(*self, 100u);
  EXPECT_FALSE(parse_self_stat("garbage").has_value());
}

TEST(Volunteer, OthersShareIsBusyTimeLessOwnOverAllTime) {
  const CpuSample a{.total = 1000, .idle = 600, .self = 100};
  // 1,000 ticks pass: 300 idle, so 700 busy, of which 200 were ours: others used 50 %.
  const CpuSample b{.total = 2000, .idle = 900, .self = 300};
  EXPECT_DOUBLE_EQ(others_cpu_share(a, b), 0.5);
  EXPECT_DOUBLE_EQ(others_cpu_share(a, a), 0.0);               // no time passed
  const CpuSample only_us{.total = 2000, .idle = 600, .self = 1100};
  EXPECT_DOUBLE_EQ(others_cpu_share(a, only_us), 0.0);         // all the busy time was ours
}

// Burns every core in child processes until killed.
// Burns every core in child processes until killed (they die with the test, whatever ends it).
std::vector<pid_t> burn_all_cores() {
  std::vector<pid_t> kids;
  const long cores = std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
  for (long i = 0; i < cores; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      volatile unsigned long x = 0;
      for (;;) x = x + 1;
    }
    if (pid > 0) kids.push_back(pid);
  }
  return kids;
}

TEST(Volunteer, IdleWatchSeesAnotherProcessBurningTheCpu) {
  IdleWatch idle({.cpu_threshold = 0.3, .resume_after_s = 60, .period_s = 0.2});
  const auto kids = burn_all_cores();
  ASSERT_FALSE(kids.empty()) << "fork failed";
  bool busy = false;
  for (int i = 0; i < 100 && !busy; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    busy = idle.busy();
  }
  for (pid_t k : kids) {
    ::kill(k, SIGKILL);
    ::waitpid(k, nullptr, 0);
  }
  EXPECT_TRUE(busy);
  EXPECT_NE(idle.why().find("other processes use"), std::string::npos) << idle.why();
}

TEST(Volunteer, PauseAndResumeReachTheNodeThroughItsPidFile) {
  const auto key = std::filesystem::temp_directory_path() /
                   ("cohort-volunteer-" + std::to_string(::getpid()) + ".key");
  install_pause_signals();
  {
    // This process plays the node: its pid file names it and is locked while it lives.
    const PidFile pid(pid_file_for(key));
    ASSERT_TRUE(std::filesystem::exists(pid_file_for(key)));
    EXPECT_THROW(PidFile second(pid_file_for(key)), Error);  // one key, one node
    EXPECT_FALSE(pause_requested());
    signal_node(key, /*pause=*/true);
    for (int i = 0; i < 100 && !pause_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(pause_requested());
    signal_node(key, /*pause=*/false);
    for (int i = 0; i < 100 && pause_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_FALSE(pause_requested());
  }
  EXPECT_FALSE(std::filesystem::exists(pid_file_for(key)));  // removed at exit
  EXPECT_THROW(signal_node(key, true), Error);                 // no node runs with that key
  // A stale file (a node killed with SIGKILL leaves it) naming a live process: nobody holds its
  // lock, so nothing is signalled.
  std::ofstream(pid_file_for(key)) << ::getpid() << "\n";
  EXPECT_THROW(signal_node(key, true), Error);
  EXPECT_FALSE(pause_requested());
  std::filesystem::remove(pid_file_for(key));
}

TEST(Volunteer, StatusLineSaysWhatTheNodeDoes) {
  const std::string line = format_status_line({.state = "working",
                                               .lease = "s3-ab12",
                                               .lease_groups = 4,
                                               .tokens_per_s = 1234.4,
                                               .version = 12,
                                               .bytes_up = 3.5 * 1024 * 1024,
                                               .bytes_down = 2048,
                                               .credit_tokens = 5120,
                                               .credit_groups = 17});
  EXPECT_EQ(line,
            "cohort · working · lease s3-ab12 (4 groups) · 1234 tok/s · v12 · ↑ 3.5 MiB ↓ 2.0 KiB · "
            "credit 5120 tokens, 17 groups");
}

}  // namespace
}  // namespace cohort::node
