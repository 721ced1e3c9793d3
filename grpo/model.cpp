#include "grpo/model.h"

#include <torch/torch.h>

#include <array>
#include <cmath>
#include <limits>

#include "common/check.h"
#include "grpo/decode_cpu.h"
#include "grpo/fp8_linear.h"

namespace cohort::grpo {
namespace {

using at::Tensor;

Tensor linear_fp32(const Tensor& x, const Tensor& w, const Tensor& b) {
  return at::linear(x, w, b);
}

Tensor linear_bf16(const Tensor& x, const Tensor& w, const Tensor& b) {
  auto y = at::linear(x.to(at::kBFloat16), w.to(at::kBFloat16),
                      b.defined() ? b.to(at::kBFloat16) : b);
  return y.to(at::kFloat);
}

std::array<LinearFn, 3>& linear_table() {
  // FP8 is referenced here, not self-registered: a static registrar in a static library
  // would be dropped by the linker.
  static std::array<LinearFn, 3> table{linear_fp32, linear_bf16, fp8_linear};
  return table;
}

Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  auto var = x.pow(2).mean(-1, /*keepdim=*/true);
  return x * at::rsqrt(var + eps) * w;
}

Tensor rotate_half(const Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// q: [N, H, Tq, D], k/v: [N, KV, Tk, D], bias broadcastable to [N, 1, 1, Tq, Tk].
// GQA without copying K/V: the g query heads that share a KV head are folded into the rows.
Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias) {
  const int64_t n = q.size(0), h = q.size(1), tq = q.size(2), d = q.size(3);
  const int64_t kv = k.size(1), g = h / kv, tk = k.size(2);
  auto q2 = q.reshape({n, kv, g * tq, d});
  auto scores = at::matmul(q2, k.transpose(-1, -2)).view({n, kv, g, tq, tk});
  auto probs = at::softmax(scores + bias, -1).view({n, kv, g * tq, tk});
  auto out = at::matmul(probs, v).view({n, h, tq, d});
  return out.transpose(1, 2).reshape({n, tq, h * d});
}

}  // namespace

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  if (s == "fp8") return Precision::fp8;
  throw Error("unknown precision '" + s + "' (expected fp32, bf16 or fp8)");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::bf16: return "bf16";
    case Precision::fp8: return "fp8";
  }
  return "?";
}

at::Device parse_device(const std::string& s) {
  at::Device device = at::kCPU;
  try {
    device = at::Device(s);
  } catch (const std::exception&) {
    throw Error("unknown device '" + s + "' (expected cpu, cuda or cuda:N)");
  }
  if (device.is_cpu()) return device;
  if (!device.is_cuda())
    throw Error("unsupported device '" + s + "' (expected cpu, cuda or cuda:N)");
  // A CPU-only LibTorch has no CUDA runtime behind its hooks: versionCUDART() throws there.
  bool cuda_build = at::hasCUDA();
  if (!cuda_build) {
    try {
      (void)at::detail::getCUDAHooks().versionCUDART();
      cuda_build = true;
    } catch (const std::exception&) {
    }
  }
  if (!cuda_build)
    throw Error("--device " + s +
                ": this LibTorch has no CUDA support (it is a CPU-only build); "
                "build against a CUDA build of LibTorch (CMAKE_PREFIX_PATH=/path/to/libtorch, "
                "see docs/PEER.md) or use --device cpu");
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (count == 0)
    throw Error("--device " + s +
                ": LibTorch has CUDA support but sees no GPU (driver, "
                "CUDA_VISIBLE_DEVICES, or container started without --gpus?)");
  if (device.has_index() && device.index() >= count)
    throw Error("--device " + s + ": only " + std::to_string(count) + " GPU(s) visible (cuda:0.." +
                "cuda:" + std::to_string(count - 1) + ")");
  return device;
}

Tensor Model::add(const std::string& name, std::vector<int64_t> shape, bool is_norm) {
  auto t = is_norm ? at::ones(shape) : at::zeros(shape);
  params_.push_back({name, t});
  return t;
}

Model::Model(ModelConfig config, uint64_t seed) : config_(std::move(config)) {
  config_.validate();
  const auto& c = config_;
  const int64_t d = c.hidden_size, hd = c.dim_head();
  const int64_t q = c.num_attention_heads * hd, kv = c.num_key_value_heads * hd;

  embed_ = add("model.embed_tokens.weight", {c.vocab_size, d}, false);
  layers_.resize(c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer& L = layers_[i];
    L.input_norm = add(p + "input_layernorm.weight", {d}, true);
    L.q_w = add(p + "self_attn.q_proj.weight", {q, d}, false);
    if (c.qkv_bias()) L.q_b = add(p + "self_attn.q_proj.bias", {q}, false);
    L.k_w = add(p + "self_attn.k_proj.weight", {kv, d}, false);
    if (c.qkv_bias()) L.k_b = add(p + "self_attn.k_proj.bias", {kv}, false);
    L.v_w = add(p + "self_attn.v_proj.weight", {kv, d}, false);
    if (c.qkv_bias()) L.v_b = add(p + "self_attn.v_proj.bias", {kv}, false);
    L.o_w = add(p + "self_attn.o_proj.weight", {d, q}, false);
    if (c.o_bias()) L.o_b = add(p + "self_attn.o_proj.bias", {d}, false);
    L.post_norm = add(p + "post_attention_layernorm.weight", {d}, true);
    L.gate_w = add(p + "mlp.gate_proj.weight", {c.intermediate_size, d}, false);
    L.up_w = add(p + "mlp.up_proj.weight", {c.intermediate_size, d}, false);
    L.down_w = add(p + "mlp.down_proj.weight", {d, c.intermediate_size}, false);
  }
  final_norm_ = add("model.norm.weight", {d}, true);
  head_ = c.tie_word_embeddings ? embed_ : add("lm_head.weight", {c.vocab_size, d}, false);

  // Hugging Face's initialization: N(0, 0.02) for matrices, zeros for biases, ones for norms.
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, t] : params_) {
    if (t.dim() == 2) t.normal_(0.0, 0.02, gen);
    t.set_requires_grad(true);
  }
  // θ^(-2i/d) with config.json's rope_scaling applied (linear, llama3), as transformers does.
  const std::vector<double> inv_freq = c.rope_inv_freq();
  inv_freq_ = at::tensor(at::ArrayRef<double>(inv_freq), at::kDouble).to(at::kFloat);
}

std::vector<Tensor> Model::parameters() const {
  std::vector<Tensor> out;
  out.reserve(params_.size());
  for (const auto& p : params_) out.push_back(p.tensor);
  return out;
}

Tensor* Model::find(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return &p.tensor;
  return nullptr;
}

void Model::copy_from(const Model& other) {
  COHORT_CHECK(other.params_.size() == params_.size(), "models differ in structure");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) params_[i].tensor.copy_(other.params_[i].tensor);
}

void Model::to(at::Device device) {
  at::NoGradGuard no_grad;
  // set_data swaps the storage under the same TensorImpl, as torch::nn::Module::to does, so the
  // Layer fields and a tied head_ (same impl as embed_) move with params_.
  for (auto& p : params_) p.tensor.set_data(p.tensor.to(device));
  inv_freq_ = inv_freq_.to(device);
}

Tensor Model::linear(const Tensor& x, const Tensor& w, const Tensor& b) const {
  LinearFn fn = linear_table()[static_cast<int>(precision_)];
  if (fn == nullptr)
    throw Error(std::string("precision ") + precision_name(precision_) +
                " is not available in this build");
  return fn(x, w, b);
}

std::pair<Tensor, Tensor> Model::rope_tables(const Tensor& positions) const {
  auto freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq_;  // [N, T, D/2]
  auto emb = at::cat({freqs, freqs}, -1).unsqueeze(1);                // [N, 1, T, D]
  return {emb.cos(), emb.sin()};
}

FusedBlockWeights Model::fuse(const Layer& L) const {
  FusedBlockWeights f;
  f.qkv_w = at::cat({L.q_w, L.k_w, L.v_w}, 0);
  if (L.q_b.defined()) f.qkv_b = at::cat({L.q_b, L.k_b, L.v_b}, 0);
  f.gate_up_w = at::cat({L.gate_w, L.up_w}, 0);
  return f;
}

Tensor Model::block(const Layer& L, const FusedBlockWeights& f, const Tensor& x, const Tensor& cos,
                    const Tensor& sin, const Tensor& bias, KVCache* cache, size_t li) const {
  const auto& c = config_;
  const int64_t n = x.size(0), t = x.size(1), hd = c.dim_head();
  const int64_t h = c.num_attention_heads, kvh = c.num_key_value_heads;
  const int64_t inter = c.intermediate_size;
  const double scale = 1.0 / std::sqrt(double(hd));

  auto xn = rms_norm(x, L.input_norm, c.rms_norm_eps);
  auto qkv = linear(xn, f.qkv_w, f.qkv_b);
  auto q = qkv.narrow(-1, 0, h * hd).view({n, t, h, hd}).transpose(1, 2);
  auto k = qkv.narrow(-1, h * hd, kvh * hd).view({n, t, kvh, hd}).transpose(1, 2);
  auto v = qkv.narrow(-1, (h + kvh) * hd, kvh * hd).view({n, t, kvh, hd}).transpose(1, 2);
  q = (q * cos + rotate_half(q) * sin) * scale;
  k = k * cos + rotate_half(k) * sin;
  if (cache != nullptr) {
    const int64_t start = cache->length;
    cache->k[li].narrow(2, start, t).copy_(k);
    cache->v[li].narrow(2, start, t).copy_(v);
    k = cache->k[li].narrow(2, 0, start + t);
    v = cache->v[li].narrow(2, 0, start + t);
  }
  auto attn = attend(q, k, v, bias);
  auto hmid = x + linear(attn, L.o_w, L.o_b);
  auto hn = rms_norm(hmid, L.post_norm, c.rms_norm_eps);
  auto gate_up = linear(hn, f.gate_up_w, {});
  auto mlp = linear(at::silu(gate_up.narrow(-1, 0, inter)) * gate_up.narrow(-1, inter, inter),
                    L.down_w, {});
  return hmid + mlp;
}

Tensor Model::hidden(const Tensor& tokens_in, const Tensor& positions_in,
                     const Tensor& key_valid_in) const {
  // Inputs follow the model (no copy when they are already there).
  const Tensor tokens = tokens_in.to(device()), positions = positions_in.to(device());
  const Tensor key_valid = key_valid_in.to(device());
  const int64_t t = tokens.size(1);
  const auto on = at::TensorOptions().device(device());
  // allowed(i, j) = (j <= i and key j is real) or j == i; the diagonal keeps padding rows finite.
  auto causal = at::ones({t, t}, on.dtype(at::kBool)).tril();
  auto allowed = causal & key_valid.unsqueeze(1);  // [N, T, T]
  allowed = allowed | at::eye(t, on.dtype(at::kBool));
  auto bias = at::zeros(allowed.sizes(), on.dtype(at::kFloat))
                  .masked_fill_(allowed.logical_not(), -std::numeric_limits<float>::infinity())
                  .view({tokens.size(0), 1, 1, t, t});
  auto [cos, sin] = rope_tables(positions);
  auto x = at::embedding(embed_, tokens);
  // Concatenated inside the graph, so autograd splits the gradient back onto each projection.
  for (size_t i = 0; i < layers_.size(); ++i)
    x = block(layers_[i], fuse(layers_[i]), x, cos, sin, bias, nullptr, i);
  return rms_norm(x, final_norm_, config_.rms_norm_eps);
}

Tensor Model::lm_head(const Tensor& hidden) const { return at::linear(hidden, head_); }

Tensor Model::forward(const Tensor& tokens, const Tensor& positions,
                      const Tensor& key_valid) const {
  return lm_head(hidden(tokens, positions, key_valid));
}

KVCache Model::make_cache(int64_t n, int64_t max_len) const {
  KVCache cache;
  const auto& c = config_;
  const auto on = at::TensorOptions().device(device()).dtype(at::kFloat);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    cache.k.push_back(at::empty({n, c.num_key_value_heads, max_len, c.dim_head()}, on));
    cache.v.push_back(at::empty({n, c.num_key_value_heads, max_len, c.dim_head()}, on));
  }
  cache.key_bias = at::full({n, 1, 1, max_len}, -std::numeric_limits<float>::infinity(), on);
  at::NoGradGuard no_grad;
  for (const auto& layer : layers_) cache.fused.push_back(fuse(layer));
  cache.max_len = max_len;
  return cache;
}

Tensor Model::forward_cached(const Tensor& tokens_in, const Tensor& positions_in,
                             const Tensor& key_valid_in, KVCache& cache, bool all_positions) const {
  const Tensor tokens = tokens_in.to(device()), positions = positions_in.to(device());
  const Tensor key_valid = key_valid_in.to(device());
  const int64_t n = tokens.size(0), t = tokens.size(1), start = cache.length;
  if (start + t > cache.max_len)
    throw Error("KV cache overflow: " + std::to_string(start + t) + " positions, capacity " +
                std::to_string(cache.max_len));
  if (t == 1 && takes_fast_decode(tokens, cache)) {
    auto logits = decode_step(tokens, positions, key_valid, cache);
    return all_positions ? logits.unsqueeze(1) : logits;
  }
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const auto on = at::TensorOptions().device(device());
  cache.key_bias.narrow(3, start, t)
      .copy_(at::zeros({n, t}, on.dtype(at::kFloat))
                 .masked_fill_(key_valid.logical_not(), neg_inf)
                 .view({n, 1, 1, t}));
  // Row i of the new block sees cached keys, new keys up to itself, and always itself.
  auto keys = cache.key_bias.narrow(3, 0, start + t).unsqueeze(3);  // [N, 1, 1, 1, S]
  auto block_mask = at::zeros({t, start + t}, on.dtype(at::kFloat));
  if (t > 1) {
    auto future = at::ones({t, t}, on.dtype(at::kBool)).triu(1);
    block_mask.narrow(1, start, t).masked_fill_(future, neg_inf);
  }
  auto bias = keys + block_mask;  // [N, 1, 1, T, S]
  auto self = bias.narrow(4, start, t).diagonal(0, 3, 4);
  self.zero_();
  auto [cos, sin] = rope_tables(positions);
  auto x = at::embedding(embed_, tokens);
  for (size_t i = 0; i < layers_.size(); ++i)
    x = block(layers_[i], cache.fused[i], x, cos, sin, bias, &cache, i);
  cache.length = start + t;
  if (!all_positions) x = x.select(1, t - 1);
  return lm_head(rms_norm(x, final_norm_, config_.rms_norm_eps));
}

bool Model::takes_fast_decode(const Tensor& tokens, const KVCache& cache) const {
  if (!fast_decode_ || precision_ != Precision::fp32 || at::GradMode::is_enabled()) return false;
  if (!tokens.device().is_cpu() || !embed_.device().is_cpu() ||
      embed_.scalar_type() != at::kFloat || !cache.key_bias.is_contiguous())
    return false;
  for (size_t i = 0; i < cache.k.size(); ++i)
    if (!cache.k[i].device().is_cpu() || cache.k[i].scalar_type() != at::kFloat ||
        !cache.k[i].is_contiguous() || !cache.v[i].is_contiguous())
      return false;
  return true;
}

// forward_cached() for one new position per row, with the same arithmetic as block() up to the
// order of summation: RMSNorm, RoPE + cache write + attention and SiLU·up are single kernels,
// the residual adds ride on the GEMMs (addmm), and the bias row is written in place.
Tensor Model::decode_step(const Tensor& tokens, const Tensor& positions, const Tensor& key_valid,
                          KVCache& cache) const {
  const auto& c = config_;
  const int64_t n = tokens.size(0), start = cache.length, d = c.hidden_size;
  const int64_t hd = c.dim_head(), h = c.num_attention_heads, kvh = c.num_key_value_heads;
  const float eps = static_cast<float>(c.rms_norm_eps);

  auto valid = key_valid.reshape({n}).to(at::kBool).contiguous();
  const bool* vp = valid.data_ptr<bool>();
  float* key_bias = cache.key_bias.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r)
    key_bias[r * cache.max_len + start] = vp[r] ? 0.0f : -std::numeric_limits<float>::infinity();

  auto [cos, sin] = rope_tables(positions);  // [N, 1, 1, D], contiguous
  cos = cos.contiguous();
  sin = sin.contiguous();
  decode_cpu::AttentionShape shape;
  shape.rows = n;
  shape.heads = h;
  shape.kv_heads = kvh;
  shape.head_dim = hd;
  shape.max_len = cache.max_len;
  shape.start = start;
  shape.scale = static_cast<float>(1.0 / std::sqrt(double(hd)));

  auto ptr = [](const Tensor& t) { return t.data_ptr<float>(); };
  Tensor x = at::embedding(embed_, tokens.reshape({n}));  // [N, d]
  Tensor xn = at::empty({n, d});
  Tensor attn = at::empty({n, h * hd});
  Tensor act = at::empty({n, c.intermediate_size});
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& L = layers_[i];
    const FusedBlockWeights& f = cache.fused[i];
    decode_cpu::rms_norm(ptr(x), ptr(L.input_norm.contiguous()), eps, n, d, ptr(xn));
    Tensor qkv = f.qkv_b.defined() ? at::addmm(f.qkv_b, xn, f.qkv_w.t()) : at::mm(xn, f.qkv_w.t());
    decode_cpu::attention(shape, ptr(qkv), ptr(cos), ptr(sin), key_bias, ptr(cache.k[i]),
                          ptr(cache.v[i]), ptr(attn));
    Tensor hmid = at::addmm(x, attn, L.o_w.t());
    if (L.o_b.defined()) hmid.add_(L.o_b);
    decode_cpu::rms_norm(ptr(hmid), ptr(L.post_norm.contiguous()), eps, n, d, ptr(xn));
    Tensor gate_up = at::mm(xn, f.gate_up_w.t());
    decode_cpu::silu_mul(ptr(gate_up), n, c.intermediate_size, ptr(act));
    x = at::addmm(hmid, act, L.down_w.t());
  }
  cache.length = start + 1;
  decode_cpu::rms_norm(ptr(x), ptr(final_norm_.contiguous()), eps, n, d, ptr(xn));
  return at::mm(xn, head_.t());
}

}  // namespace cohort::grpo
