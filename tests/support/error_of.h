// The message of the cohort::Error that `f` throws; a test failure (and "") when it throws none.
//
//   EXPECT_NE(error_of([&] { load(path); }).find("missing tensor"), std::string::npos);
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "common/check.h"

namespace cohort::test {

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

}  // namespace cohort::test
