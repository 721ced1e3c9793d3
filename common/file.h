// A whole file's bytes, for the small files Cohort reads at once (configs, round files, cards).
//
//   const std::string text = read_file("round-card.json");   // throws cohort::Error
#pragma once

#include <fstream>
#include <sstream>
#include <string>

#include "common/check.h"

namespace cohort {

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error("cannot read " + path);
  return ss.str();
}

}  // namespace cohort
