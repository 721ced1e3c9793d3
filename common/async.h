// Blocking work off an Asio coroutine's thread: `run_on` posts `f` to another executor (a thread
// pool) and resumes the awaiting coroutine on its own executor with f's result, or rethrows f's
// exception there. Header-only (standalone Asio).
//
//   asio::thread_pool pool{1};
//   const auto read = [&] { return slow_read(path); };    // a named lambda (see below)
//   std::string bytes = co_await run_on(pool.get_executor(), read);
//
// Pass a named object, never a temporary: GCC 12 destroys a temporary in a co_await expression
// twice (PR 100611), which frees what a lambda captured by value.
#pragma once

#include <asio.hpp>
#include <exception>
#include <optional>
#include <utility>

namespace cohort {

template <typename Executor, typename F>
auto run_on(Executor executor, const F& f) -> asio::awaitable<decltype(f())> {
  using R = decltype(f());
  const auto home = co_await asio::this_coro::executor;
  std::optional<R> result;
  std::exception_ptr error;
  co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
      [&](auto resume) {
        asio::post(executor, [&, resume = std::move(resume), home]() mutable {
          try {
            result.emplace(f());
          } catch (...) {
            error = std::current_exception();
          }
          asio::post(home, std::move(resume));
        });
      },
      asio::use_awaitable);
  if (error) std::rethrow_exception(error);
  co_return std::move(*result);
}

}  // namespace cohort
