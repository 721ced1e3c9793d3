#include "grpo/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/check.h"
#include "common/file.h"

namespace cohort::grpo {
namespace {

using nlohmann::json;
constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference implementation's limit

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  int64_t size;
};
constexpr DtypeInfo kDtypes[] = {
    {"F32", at::kFloat, 4},  {"F16", at::kHalf, 2},  {"BF16", at::kBFloat16, 2},
    {"F64", at::kDouble, 8}, {"I64", at::kLong, 8},  {"I32", at::kInt, 4},
    {"I16", at::kShort, 2},  {"I8", at::kChar, 1},   {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
};

const DtypeInfo* by_name(const std::string& n) {
  for (const auto& d : kDtypes)
    if (n == d.name) return &d;
  return nullptr;
}
const DtypeInfo* by_type(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (t == d.type) return &d;
  return nullptr;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       at::ScalarType dtype, const std::map<std::string, std::string>& metadata) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    throw Error("safetensors: checkpoints are written as F32, BF16 or F16");
  std::vector<at::Tensor> data;
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach();
    if (c.is_floating_point()) c = c.to(dtype);
    c = c.contiguous().cpu();
    const DtypeInfo* info = by_type(c.scalar_type());
    if (info == nullptr) throw Error("safetensors: unsupported dtype for tensor " + name);
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * info->size;
    header[name] = {{"dtype", info->name},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  uint64_t hlen = h.size();
  unsigned char len_le[8];
  for (int i = 0; i < 8; ++i) len_le[i] = static_cast<unsigned char>(hlen >> (8 * i));

  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty()) std::filesystem::create_directories(dir);
  AtomicFile f(path);
  f.write(len_le, 8);
  f.write(h.data(), h.size());
  for (const auto& c : data) f.write(c.data_ptr(), c.numel() * c.element_size());
  f.commit();
}

namespace {

// A read-only private mapping of a whole file, unmapped when the last tensor aliasing it dies.
struct FileMapping {
  void* data = MAP_FAILED;
  size_t size = 0;
  ~FileMapping() {
    if (data != MAP_FAILED) ::munmap(data, size);
  }
};

std::vector<NamedTensor> read_impl(const std::string& path,
                                   std::map<std::string, std::string>* metadata, bool map) {
  auto fail = [&](const std::string& m) -> Error { return Error(path + ": " + m); };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fail("cannot open file");
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) throw fail("truncated (shorter than the 8-byte header length)");
  unsigned char len_le[8];
  in.read(reinterpret_cast<char*>(len_le), 8);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t(len_le[i]) << (8 * i);
  if (hlen > kMaxHeader) throw fail("header length " + std::to_string(hlen) + " exceeds 100 MiB");
  if (hlen > file_size - 8) throw fail("truncated (header runs past the end of the file)");
  std::string h(hlen, '\0');
  in.read(h.data(), static_cast<std::streamsize>(hlen));
  json header;
  try {
    header = json::parse(h);
  } catch (const json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail("header is not a JSON object");
  const uint64_t data_size = file_size - 8 - hlen;

  struct Entry {
    std::string name;
    const DtypeInfo* info;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (metadata && v.is_object())
        for (auto& [k, mv] : v.items())
          if (mv.is_string()) (*metadata)[k] = mv.get<std::string>();
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      throw fail("tensor '" + name + "' lacks dtype, shape or data_offsets");
    Entry e{name, nullptr, {}, 0, 0};
    if (!v["dtype"].is_string() || !(e.info = by_name(v["dtype"].get<std::string>())))
      throw fail("tensor '" + name + "' has an unsupported dtype " + v["dtype"].dump());
    uint64_t numel = 1;
    if (!v["shape"].is_array()) throw fail("tensor '" + name + "' has a malformed shape");
    for (auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw fail("tensor '" + name + "' has a negative or non-integer dimension");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > (1ull << 40) || (dim != 0 && numel > (1ull << 40) / dim))
        throw fail("tensor '" + name + "' is impossibly large");
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      throw fail("tensor '" + name + "' has malformed data_offsets");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.end < e.begin || e.end > data_size)
      throw fail("tensor '" + name + "' has a byte range outside the file (truncated?)");
    if (e.end - e.begin != numel * static_cast<uint64_t>(e.info->size))
      throw fail("tensor '" + name + "': shape × dtype does not match its byte range");
    entries.push_back(std::move(e));
  }
  // The ranges must tile the data section exactly: no holes, no overlaps.
  std::vector<const Entry*> sorted;
  for (const auto& e : entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  uint64_t expect = 0;
  for (const Entry* e : sorted) {
    if (e->begin != expect) throw fail("tensor byte ranges overlap or leave holes");
    expect = e->end;
  }
  if (expect != data_size) throw fail("data section size does not match the header");

  std::vector<NamedTensor> out;
  const uint64_t base = 8 + hlen;
  std::shared_ptr<FileMapping> mapping;
  if (map && file_size > 0) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw fail(std::string("cannot open file: ") + std::strerror(errno));
    mapping = std::make_shared<FileMapping>();
    mapping->size = file_size;
    mapping->data = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (mapping->data == MAP_FAILED) mapping.reset();  // fall back to reading copies
  }
  for (const auto& e : entries) {
    char* at = mapping ? static_cast<char*>(mapping->data) + base + e.begin : nullptr;
    if (at != nullptr && reinterpret_cast<uintptr_t>(at) % e.info->size == 0) {
      // The tensor aliases the mapping (read-only pages: callers copy out, never write).
      auto keep = mapping;
      at::Tensor t = at::from_blob(
          at, e.shape, [keep](void*) mutable { keep.reset(); },
          at::TensorOptions().dtype(e.info->type));
      out.push_back({e.name, std::move(t)});
      continue;
    }
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.info->type));
    in.seekg(static_cast<std::streamoff>(base + e.begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
    if (!in) throw fail("read failed for tensor '" + e.name + "'");
    out.push_back({e.name, std::move(t)});
  }
  return out;
}

}  // namespace

std::vector<NamedTensor> read_safetensors(const std::string& path,
                                          std::map<std::string, std::string>* metadata) {
  return read_impl(path, metadata, /*map=*/false);
}

std::vector<NamedTensor> map_safetensors(const std::string& path,
                                         std::map<std::string, std::string>* metadata) {
  return read_impl(path, metadata, /*map=*/true);
}

}  // namespace cohort::grpo
