#include "exchange/blob_store.h"

#include <atomic>
#include <cstdio>
#include <fstream>
#include <system_error>

#include "common/check.h"
#include "protocol/bytes.h"

namespace cohort::exchange {

namespace fs = std::filesystem;

BlobStore::BlobStore(fs::path dir) : dir_(std::move(dir)) {
  fs::create_directories(dir_);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (e.path().filename().string().starts_with(".tmp-")) fs::remove(e.path(), ec);
}

fs::path BlobStore::path(const protocol::Digest& d) const {
  return dir_ / digest_hex(d);
}

protocol::Digest BlobStore::put(std::string_view bytes) {
  const protocol::Digest d = protocol::blake2b_256(protocol::as_bytes(bytes));
  const fs::path final_path = path(d);
  std::error_code ec;
  if (fs::exists(final_path, ec) && fs::file_size(final_path, ec) == bytes.size()) return d;
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp = dir_ / (".tmp-" + std::to_string(counter++) + "-" +
                               final_path.filename().string());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      fs::remove(tmp, ec);
      throw Error("cannot write blob " + final_path.string() + " (disk full?)");
    }
  }
  fs::rename(tmp, final_path);
  return d;
}

std::optional<uint64_t> BlobStore::size(const protocol::Digest& d) const {
  std::error_code ec;
  const auto n = fs::file_size(path(d), ec);
  if (ec) return std::nullopt;
  return n;
}

std::string BlobStore::read(const protocol::Digest& d, uint64_t offset, uint64_t max_bytes) const {
  std::ifstream in(path(d), std::ios::binary);
  if (!in) throw Error("blob " + path(d).filename().string() + " is not held");
  in.seekg(0, std::ios::end);
  const auto total = static_cast<uint64_t>(in.tellg());
  if (offset > total)
    throw Error("offset " + std::to_string(offset) + " is past the end of a blob of " +
                std::to_string(total) + " bytes");
  std::string out(std::min(max_bytes, total - offset), '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(out.data(), static_cast<std::streamsize>(out.size()));
  if (static_cast<uint64_t>(in.gcount()) != out.size())
    throw Error("blob " + path(d).filename().string() + " could not be read");
  return out;
}

void BlobStore::keep_only(const std::set<protocol::Digest>& keep) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const auto d = parse_digest_hex(e.path().filename().string());
    if (d && !keep.contains(*d)) fs::remove(e.path(), ec);
  }
}

std::optional<protocol::Digest> parse_digest_hex(std::string_view hex) {
  if (hex.size() != 2 * protocol::kDigestLen) return std::nullopt;
  for (char c : hex)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
  const auto bytes = protocol::from_hex(hex);
  if (!bytes || bytes->size() != protocol::kDigestLen) return std::nullopt;
  protocol::Digest d{};
  std::copy(bytes->begin(), bytes->end(), d.begin());
  return d;
}

std::string digest_hex(const protocol::Digest& d) {
  return protocol::to_hex(protocol::ByteView(d.data(), d.size()));
}

}  // namespace cohort::exchange
