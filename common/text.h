// Text from untrusted peers, made safe to write anywhere (logs, the ledger, status pages): at
// most `max_bytes` of input kept, printable ASCII passed through, every other byte (control
// characters, terminal escapes, NUL, newlines, non-ASCII) written as \xNN, and a cut marked.
//
//   spdlog::info("peer {} joined", printable(join.display_name(), kMaxDisplayName));
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace cohort {

inline std::string printable(std::string_view s, size_t max_bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const size_t n = s.size() < max_bytes ? s.size() : max_bytes;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (s.size() > max_bytes) out += "...(" + std::to_string(s.size() - max_bytes) + " more bytes)";
  return out;
}

}  // namespace cohort
