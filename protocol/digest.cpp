#include "protocol/digest.h"

#include <sodium.h>

#include <fstream>
#include <vector>

#include "common/check.h"

namespace cohort::protocol {

Digest blake2b_256(ByteView data) {
  Digest out;
  crypto_generichash_blake2b(out.data(), out.size(), data.data(), data.size(), nullptr, 0);
  return out;
}

Digest blake2b_256_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  crypto_generichash_blake2b_state st;
  crypto_generichash_blake2b_init(&st, nullptr, 0, kDigestLen);
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto got = in.gcount();
    if (got > 0)
      crypto_generichash_blake2b_update(&st, reinterpret_cast<const std::uint8_t*>(block.data()),
                                        static_cast<unsigned long long>(got));
  }
  if (in.bad()) throw Error("error reading " + path);
  Digest out;
  crypto_generichash_blake2b_final(&st, out.data(), out.size());
  return out;
}

Digest signing_digest(std::string_view domain, ByteView body) {
  COHORT_CHECK(domain.find('\0') == std::string_view::npos, "domain must not contain NUL");
  crypto_generichash_blake2b_state st;
  crypto_generichash_blake2b_init(&st, nullptr, 0, kDigestLen);
  crypto_generichash_blake2b_update(&st, reinterpret_cast<const std::uint8_t*>(domain.data()), domain.size());
  const std::uint8_t zero = 0;
  crypto_generichash_blake2b_update(&st, &zero, 1);
  crypto_generichash_blake2b_update(&st, body.data(), body.size());
  Digest out;
  crypto_generichash_blake2b_final(&st, out.data(), out.size());
  return out;
}

}  // namespace cohort::protocol
