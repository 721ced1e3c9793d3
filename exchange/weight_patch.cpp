#include "exchange/weight_patch.h"

#include <zstd.h>

#include <cstring>
#include <vector>

#include "common/check.h"

namespace cohort::exchange {

namespace {

constexpr char kMagic[4] = {'C', 'W', 'P', '1'};

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Reads the body front to back; every read is bounds-checked and a failure sticks.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool le(uint64_t& v, int bytes) {
    if (!ok_ || s_.size() - pos_ < static_cast<size_t>(bytes)) return ok_ = false;
    v = 0;
    for (int i = 0; i < bytes; ++i)
      v |= uint64_t{static_cast<unsigned char>(s_[pos_ + i])} << (8 * i);
    pos_ += static_cast<size_t>(bytes);
    return true;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (!ok_ || pos_ >= s_.size()) return ok_ = false;
      const auto b = static_cast<unsigned char>(s_[pos_++]);
      if (shift == 63 && b > 1) return ok_ = false;  // past 64 bits
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return true;
    }
    return ok_ = false;
  }
  bool bytes(size_t n, std::string_view& out) {
    if (!ok_ || s_.size() - pos_ < n) return ok_ = false;
    out = s_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  [[nodiscard]] bool done() const { return ok_ && pos_ == s_.size(); }

 private:
  std::string_view s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace

std::string encode_patch(uint64_t from_version, uint64_t to_version,
                         std::span<const TensorChange> tensors, PatchStats* stats, int zstd_level) {
  PatchStats st;
  std::string body(kMagic, sizeof kMagic);
  put_le(body, from_version, 8);
  put_le(body, to_version, 8);
  std::string per_tensor;
  uint32_t listed = 0;
  std::vector<uint64_t> at;
  for (const TensorChange& t : tensors) {
    const size_t e = t.element_bytes;
    if ((e != 2 && e != 4) || t.base.size() != t.target.size() || t.base.size() % e != 0)
      throw Error("weight patch: tensor " + t.name + " has sizes that do not match");
    if (t.name.empty() || t.name.size() > 0xffff)
      throw Error("weight patch: a tensor name must be 1..65535 bytes");
    const uint64_t numel = t.base.size() / e;
    st.elements += numel;
    at.clear();
    for (uint64_t i = 0; i < numel; ++i)
      if (std::memcmp(t.base.data() + i * e, t.target.data() + i * e, e) != 0) at.push_back(i);
    if (at.empty()) continue;
    ++listed;
    st.changed += at.size();
    put_le(per_tensor, t.name.size(), 2);
    per_tensor += t.name;
    put_le(per_tensor, e, 1);
    put_le(per_tensor, numel, 8);
    put_le(per_tensor, at.size(), 8);
    for (size_t j = 0; j < at.size(); ++j)
      put_varint(per_tensor, j == 0 ? at[0] : at[j] - at[j - 1] - 1);
    for (uint64_t i : at) per_tensor.append(t.target.data() + i * e, e);
  }
  put_le(body, listed, 4);
  body += per_tensor;
  std::string out(ZSTD_compressBound(body.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), body.data(), body.size(), zstd_level);
  COHORT_CHECK(!ZSTD_isError(n), "zstd compression");
  out.resize(n);
  st.body_bytes = body.size();
  st.patch_bytes = out.size();
  if (stats) *stats = st;
  return out;
}

namespace {

std::optional<std::string> decompress(std::string_view patch, uint64_t max_body_bytes,
                                      std::string& body) {
  const unsigned long long size = ZSTD_getFrameContentSize(patch.data(), patch.size());
  if (size == ZSTD_CONTENTSIZE_ERROR) return "not a zstd frame";
  if (size == ZSTD_CONTENTSIZE_UNKNOWN) return "the zstd frame does not state its size";
  if (size > max_body_bytes)
    return "the patch would decompress to " + std::to_string(size) + " bytes, over " +
           std::to_string(max_body_bytes);
  body.resize(size);
  const size_t n = ZSTD_decompress(body.data(), body.size(), patch.data(), patch.size());
  if (ZSTD_isError(n)) return std::string("zstd: ") + ZSTD_getErrorName(n);
  if (n != size) return "the zstd frame holds another size than it states";
  return std::nullopt;
}

}  // namespace

std::optional<std::pair<uint64_t, uint64_t>> patch_versions(std::string_view patch,
                                                            uint64_t max_body_bytes) {
  std::string body;
  if (decompress(patch, max_body_bytes, body)) return std::nullopt;
  Reader r(body);
  std::string_view magic;
  uint64_t from = 0, to = 0;
  if (!r.bytes(4, magic) || magic != std::string_view(kMagic, 4) || !r.le(from, 8) || !r.le(to, 8))
    return std::nullopt;
  return std::make_pair(from, to);
}

std::optional<std::string> apply_patch(std::string_view patch, uint64_t expect_from,
                                       std::map<std::string, std::string>& held,
                                       uint64_t max_body_bytes) {
  std::string body;
  if (auto err = decompress(patch, max_body_bytes, body)) return "weight patch: " + *err;
  Reader r(body);
  std::string_view magic;
  uint64_t from = 0, to = 0, count = 0;
  if (!r.bytes(4, magic) || magic != std::string_view(kMagic, 4))
    return "weight patch: bad magic (not CWP1)";
  if (!r.le(from, 8) || !r.le(to, 8) || !r.le(count, 4)) return "weight patch: truncated header";
  if (from != expect_from)
    return "weight patch goes from version " + std::to_string(from) + ", not " +
           std::to_string(expect_from);
  if (to <= from)
    return "weight patch: target version " + std::to_string(to) + " is not after " +
           std::to_string(from);
  struct Edit {
    std::string* bytes;
    size_t element;
    std::vector<uint64_t> at;
    std::string_view values;
  };
  std::vector<Edit> edits;
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t name_len = 0, e = 0, numel = 0, changed = 0;
    std::string_view name;
    if (!r.le(name_len, 2) || !r.bytes(name_len, name) || !r.le(e, 1) || !r.le(numel, 8) ||
        !r.le(changed, 8))
      return "weight patch: tensor " + std::to_string(k) + " is truncated";
    auto it = held.find(std::string(name));
    if (it == held.end())
      return "weight patch names a tensor not held: " + std::string(name.substr(0, 128));
    for (const Edit& d : edits)
      if (d.bytes == &it->second) return "weight patch lists " + it->first + " twice";
    if ((e != 2 && e != 4) || it->second.size() != numel * e)
      return "weight patch: " + it->first + " has " + std::to_string(numel) + " elements of " +
             std::to_string(e) + " bytes; the held tensor has " +
             std::to_string(it->second.size()) + " bytes";
    if (changed == 0 || changed > numel)
      return "weight patch: " + it->first + " changes " + std::to_string(changed) + " of " +
             std::to_string(numel) + " elements";
    Edit d{&it->second, static_cast<size_t>(e), {}, {}};
    d.at.reserve(changed);
    uint64_t next = 0;  // the smallest position the next entry may name
    for (uint64_t j = 0; j < changed; ++j) {
      uint64_t gap = 0;
      if (!r.varint(gap)) return "weight patch: " + it->first + "'s positions are truncated";
      if (gap >= numel - next)
        return "weight patch: " + it->first + " names a position past its end";
      d.at.push_back(next + gap);
      next += gap + 1;
    }
    if (!r.bytes(changed * e, d.values))
      return "weight patch: " + it->first + "'s values are truncated";
    edits.push_back(std::move(d));
  }
  if (!r.done()) return "weight patch: bytes after the last tensor";
  for (const Edit& d : edits)
    for (size_t j = 0; j < d.at.size(); ++j)
      std::memcpy(d.bytes->data() + d.at[j] * d.element, d.values.data() + j * d.element,
                  d.element);
  return std::nullopt;
}

}  // namespace cohort::exchange
