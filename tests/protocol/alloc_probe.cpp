#include "tests/protocol/alloc_probe.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
std::atomic<bool> g_probe{false};
std::atomic<std::size_t> g_max_alloc{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_probe.load(std::memory_order_relaxed)) {
    std::size_t cur = g_max_alloc.load(std::memory_order_relaxed);
    while (n > cur && !g_max_alloc.compare_exchange_weak(cur, n)) {
    }
  }
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace cohort::protocol {

AllocationProbe::AllocationProbe() {
  g_max_alloc = 0;
  g_probe = true;
}
AllocationProbe::~AllocationProbe() { g_probe = false; }
std::size_t AllocationProbe::max() const { return g_max_alloc.load(); }

}  // namespace cohort::protocol
