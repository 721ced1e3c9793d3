// The learning core on a GPU against the CPU: one GRPO step (loss, per-token log-probs,
// gradients and their norm) of the same model on the same rollout, CUDA FP32 vs CPU FP32,
// CUDA FP8 vs the CPU FP8 emulation, and CUDA FP8 vs CPU FP32 within the E4M3 format's bound;
// greedy generation and a full trainer step on the device. GPU tests skip, with the reason,
// where LibTorch has no CUDA or sees no GPU (`make gpu-check` reports them as skipped).
// The format bound is checked on the CPU as well, so the harness runs on every machine.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "common/check.h"
#include "grpo/tokenizer.h"
#include "grpo/fp8_linear.h"
#include "grpo/trainer.h"

namespace cohort::grpo {
namespace {

// E4M3 rounds to 3 mantissa bits: relative error <= u8 = 2^-4 per operand (kernels/fp8.h), so a
// product of two quantized operands is off by at most (1 + u8)^2 - 1 relative. Loss and gradient
// norm are sums of such products with errors of both signs; we hold them to that per-product
// bound (the CPU test below shows the emulation sits well inside it).
constexpr double kU8 = 1.0 / 16;
constexpr double kFp8ProductBound = (1 + kU8) * (1 + kU8) - 1;  // 0.1289
// FP32 on two devices differs only in summation order: u32 = 2^-24 times reduction depths of a
// few hundred is ~1e-5 relative per GEMM; 1e-3 on gradients leaves room for the chain of layers
// and for cancellation in Σ A_i ∇log π (advantages sum to zero in each group).
constexpr double kFp32GradRel = 1e-3, kFp32LogpAbs = 1e-4;
// CUDA FP8 vs the CPU emulation: the same quantization bits (kernels' tests prove the kernels
// bit-exact) except where an FP32 difference upstream flips an E4M3 rounding, one 2^-3 step on a
// rare element; 1e-2 relative on gradients, 1e-3 absolute on log-probs.
constexpr double kFp8GradRel = 1e-2, kFp8LogpAbs = 1e-3;
// A log-prob error d moves the loss -Σ A·ρ/T by at most |A|·ρ·d per token; the test's ratios
// (sampling log-probs perturbed by 0.1 sigma) stay below 2.
constexpr double kRatioBound = 2.0;

ModelConfig gpu_config() {
  ModelConfig c = task_model_config();
  c.model_type = "qwen2";  // q/k/v biases: FP8Linear's FP32 bias path too
  c.hidden_size = 256;        // whole 128-wide FP8 tiles and blocks, plus
  c.intermediate_size = 320;  // a ragged last tile (320 = 2 x 128 + 64)
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  return c;
}

GrpoConfig step_config() {
  GrpoConfig cfg;
  cfg.group_size = 4;
  cfg.prompts_per_step = 4;
  cfg.sampling.max_new_tokens = 12;
  cfg.sampling.temperature = 1.0;
  return cfg;
}

// The step's input, built once on the CPU: sampled completions, sampling log-probs perturbed so
// that ratios differ from 1 (clipping active), and fixed advantages.
ScoredBatch cpu_batch(const Model& cpu_policy, const Tokenizer& tok, const Task& task,
                      const GrpoConfig& cfg) {
  std::vector<Prompt> prompts;
  for (int i = 0; i < cfg.prompts_per_step; ++i) prompts.push_back(task.train_prompt(i));
  ScoredBatch b = rollout_and_score(cpu_policy, tok, task, prompts, cfg, 11);
  auto gen = at::detail::createCPUGenerator(5);
  b.rollout.logprobs = b.rollout.logprobs +
                       0.1 * at::randn(b.rollout.logprobs.sizes(), gen) * b.rollout.completion_mask;
  for (size_t i = 0; i < b.advantages.size(); ++i)
    b.advantages[i] = float(int(i % cfg.group_size) * 2 - (cfg.group_size - 1)) * 0.5f;
  return b;
}

struct StepResult {
  double loss = 0, grad_norm = 0, mean_abs_advantage = 0;
  at::Tensor logps;               // [N, C] on the CPU
  std::vector<at::Tensor> grads;  // per parameter, divided by units, on the CPU
};

// One GRPO step's loss and gradient (before clipping and the optimizer), read back to the host.
StepResult one_step(Model& m, const ScoredBatch& b, const GrpoConfig& cfg) {
  for (const auto& p : m.named_parameters())
    if (p.tensor.grad().defined()) p.tensor.mutable_grad().zero_();
  LossSums s = accumulate_gradient(m, nullptr, b.rollout, b.advantages, cfg);
  const double units = std::max(s.units, 1.0);
  StepResult r;
  r.loss = s.loss_sum.item<double>() / units;
  double sq = 0;
  for (const auto& p : m.named_parameters()) {
    at::Tensor g = p.tensor.grad().defined() ? (p.tensor.grad() / units).cpu().to(at::kDouble)
                                             : at::zeros(p.tensor.sizes(), at::kDouble);
    sq += g.pow(2).sum().item<double>();
    r.grads.push_back(g);
  }
  r.grad_norm = std::sqrt(sq);
  {
    at::NoGradGuard no_grad;
    r.logps = completion_logprobs(m, b.rollout, cfg.sampling.temperature).cpu().to(at::kDouble);
  }
  for (float a : b.advantages) r.mean_abs_advantage += std::fabs(a) / double(b.advantages.size());
  return r;
}

// ||g_a - g_b|| / ||g_b|| over all parameters.
double grad_rel_error(const StepResult& a, const StepResult& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    num += (a.grads[i] - b.grads[i]).pow(2).sum().item<double>();
    den += b.grads[i].pow(2).sum().item<double>();
  }
  return std::sqrt(num) / std::sqrt(den);
}

double logp_max_abs(const StepResult& a, const StepResult& b, const at::Tensor& mask) {
  return ((a.logps - b.logps).abs() * mask.to(at::kDouble)).max().item<double>();
}

// The CUDA device, or the reason there is none (parse_device's message names it).
struct Cuda {
  bool ok = false;
  std::string reason;
  at::Device device = at::kCPU;
};
Cuda cuda_device() {
  Cuda c;
  try {
    c.device = parse_device("cuda:0");
    c.ok = true;
    // Matmuls in true FP32 (LibTorch's default since 1.12; explicit so a build default can't
    // turn TF32's 10-bit mantissa into a "mismatch").
    at::globalContext().setAllowTF32CuBLAS(false);
  } catch (const Error& e) {
    c.reason = e.what();
  }
  return c;
}

#define REQUIRE_CUDA(c)         \
  const Cuda c = cuda_device(); \
  if (!c.ok) GTEST_SKIP() << "no CUDA for LibTorch: " << c.reason

struct Fixture {
  CharTokenizer tok;
  std::unique_ptr<Task> task = make_task({});
  GrpoConfig cfg = step_config();
  Model cpu{gpu_config(), 3};
  ScoredBatch batch = cpu_batch(cpu, tok, *task, cfg);
};

TEST(GrpoGpu, CpuFp8StepWithinFormatBoundOfFp32) {
  Fixture f;
  StepResult fp32 = one_step(f.cpu, f.batch, f.cfg);
  f.cpu.set_precision(Precision::fp8);
  StepResult fp8 = one_step(f.cpu, f.batch, f.cfg);
  ASSERT_GT(fp32.grad_norm, 0);
  std::printf("fp8 vs fp32 on the CPU: loss %.6g vs %.6g, grad norm %.6g vs %.6g (ratio - 1 = %.3g, "
              "bound %.3g), gradient relative error %.3g\n",
              fp8.loss, fp32.loss, fp8.grad_norm, fp32.grad_norm, fp8.grad_norm / fp32.grad_norm - 1,
              kFp8ProductBound, grad_rel_error(fp8, fp32));
  EXPECT_LE(std::fabs(fp8.loss - fp32.loss), kFp8ProductBound * fp32.mean_abs_advantage);
  EXPECT_LE(std::fabs(fp8.grad_norm / fp32.grad_norm - 1), kFp8ProductBound);
  // The emulation really quantizes (a no-op would pass the bounds above).
  EXPECT_GT(grad_rel_error(fp8, fp32), 1e-5);
}

TEST(GrpoGpu, CudaDeviceRefusedClearlyWithoutCudaLibTorch) {
  EXPECT_THROW(parse_device("tpu"), Error);
  EXPECT_THROW(parse_device("cuda:x"), Error);
  EXPECT_EQ(parse_device("cpu"), at::Device(at::kCPU));
  const Cuda c = cuda_device();
  if (c.ok) GTEST_SKIP() << "this LibTorch has CUDA and a GPU";
  try {
    parse_device("cuda");
    FAIL() << "parse_device(\"cuda\") accepted a LibTorch without a usable GPU";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(what.find("no CUDA support") != std::string::npos ||
                what.find("sees no GPU") != std::string::npos)
        << what;
  }
}

TEST(GrpoGpu, ModelMovesToCudaWithTiedHead) {
  REQUIRE_CUDA(cuda);
  Model m(gpu_config(), 3);
  m.to(cuda.device);
  EXPECT_TRUE(m.device().is_cuda());
  for (const auto& p : m.named_parameters()) {
    EXPECT_TRUE(p.tensor.is_cuda()) << p.name;
    EXPECT_TRUE(p.tensor.requires_grad()) << p.name;
    EXPECT_TRUE(p.tensor.is_leaf()) << p.name;
  }
}

// FP8Linear on every visible GPU (the last one too: the kernels must run on the tensor's device,
// not the current one) against the CPU emulation. The quantized operands are bit-identical, so
// forward and both backward GEMMs differ only by FP32 summation order.
TEST(GrpoGpu, Fp8LinearOnEachGpuMatchesCpuEmulation) {
  REQUIRE_CUDA(cuda);
  auto gen = at::detail::createCPUGenerator(9);
  const at::Tensor x = at::randn({300, 256}, gen), w = 0.05 * at::randn({320, 256}, gen);
  const at::Tensor b = at::randn({320}, gen), dy = at::randn({300, 320}, gen);
  auto run = [&](at::Device d) {
    auto xd = x.to(d).requires_grad_(true), wd = w.to(d).requires_grad_(true);
    auto bd = b.to(d).requires_grad_(true);
    auto y = fp8_linear(xd, wd, bd);
    y.backward(dy.to(d));
    return std::vector<at::Tensor>{y.cpu(), xd.grad().cpu(), wd.grad().cpu(), bd.grad().cpu()};
  };
  const auto ref = run(at::kCPU);
  const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
  for (int64_t g = 0; g < gpus; ++g) {
    const auto got = run(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(g)));
    const char* names[] = {"y", "dx", "dw", "db"};
    for (size_t i = 0; i < ref.size(); ++i) {
      const double rel = (got[i] - ref[i]).norm().item<double>() / ref[i].norm().item<double>();
      EXPECT_LE(rel, 1e-5) << names[i] << " on cuda:" << g;
    }
  }
}

TEST(GrpoGpu, CudaFp32StepMatchesCpuFp32) {
  REQUIRE_CUDA(cuda);
  Fixture f;
  Model gpu(gpu_config(), 3);
  gpu.to(cuda.device);
  StepResult ref = one_step(f.cpu, f.batch, f.cfg);
  StepResult got = one_step(gpu, f.batch, f.cfg);
  const at::Tensor& mask = f.batch.rollout.completion_mask;
  EXPECT_LE(logp_max_abs(got, ref, mask), kFp32LogpAbs);
  EXPECT_LE(std::fabs(got.loss - ref.loss), kRatioBound * kFp32LogpAbs * ref.mean_abs_advantage)
      << "cuda " << got.loss << " cpu " << ref.loss;
  EXPECT_LE(std::fabs(got.grad_norm / ref.grad_norm - 1), kFp32GradRel)
      << "cuda " << got.grad_norm << " cpu " << ref.grad_norm;
  EXPECT_LE(grad_rel_error(got, ref), kFp32GradRel);
}

TEST(GrpoGpu, CudaFp8StepMatchesCpuFp8Emulation) {
  REQUIRE_CUDA(cuda);
  Fixture f;
  Model gpu(gpu_config(), 3);
  gpu.to(cuda.device);
  f.cpu.set_precision(Precision::fp8);
  gpu.set_precision(Precision::fp8);
  StepResult ref = one_step(f.cpu, f.batch, f.cfg);
  StepResult got = one_step(gpu, f.batch, f.cfg);
  const at::Tensor& mask = f.batch.rollout.completion_mask;
  EXPECT_LE(logp_max_abs(got, ref, mask), kFp8LogpAbs);
  EXPECT_LE(std::fabs(got.loss - ref.loss), kRatioBound * kFp8LogpAbs * ref.mean_abs_advantage)
      << "cuda " << got.loss << " cpu " << ref.loss;
  EXPECT_LE(std::fabs(got.grad_norm / ref.grad_norm - 1), kFp8GradRel)
      << "cuda " << got.grad_norm << " cpu " << ref.grad_norm;
  EXPECT_LE(grad_rel_error(got, ref), kFp8GradRel);
}

TEST(GrpoGpu, CudaFp8StepWithinFormatBoundOfCpuFp32) {
  REQUIRE_CUDA(cuda);
  Fixture f;
  Model gpu(gpu_config(), 3);
  gpu.to(cuda.device);
  gpu.set_precision(Precision::fp8);
  StepResult ref = one_step(f.cpu, f.batch, f.cfg);
  StepResult got = one_step(gpu, f.batch, f.cfg);
  EXPECT_LE(std::fabs(got.loss - ref.loss), kFp8ProductBound * ref.mean_abs_advantage)
      << "cuda fp8 " << got.loss << " cpu fp32 " << ref.loss;
  EXPECT_LE(std::fabs(got.grad_norm / ref.grad_norm - 1), kFp8ProductBound)
      << "cuda fp8 " << got.grad_norm << " cpu fp32 " << ref.grad_norm;
}

TEST(GrpoGpu, CudaGreedyGenerationMatchesCpu) {
  REQUIRE_CUDA(cuda);
  Fixture f;
  Model gpu(gpu_config(), 3);
  gpu.to(cuda.device);
  SamplingParams sp;
  sp.temperature = 0.0;
  sp.max_new_tokens = 12;
  std::vector<std::vector<int64_t>> prompts;
  for (int i = 0; i < 6; ++i) prompts.push_back(encode_prompt(f.tok, f.task->train_prompt(i)));
  Rollout a = generate(f.cpu, prompts, 1, sp, f.tok.pad_id());
  Rollout b = generate(gpu, prompts, 1, sp, f.tok.pad_id());
  EXPECT_EQ(a.completions, b.completions);
  EXPECT_TRUE(b.logprobs.is_cpu());  // rollouts stay on the host
  EXPECT_LE((a.logprobs - b.logprobs).abs().max().item<double>(), kFp32LogpAbs);
}

TEST(GrpoGpu, TrainerStepOnCudaFp8) {
  REQUIRE_CUDA(cuda);
  CharTokenizer tok;
  auto task = make_task({});
  Model gpu(gpu_config(), 3);
  gpu.to(cuda.device);
  gpu.set_precision(Precision::fp8);
  GrpoConfig cfg = step_config();
  cfg.loss.beta = 0.04;  // the reference model follows the policy to the GPU
  GrpoTrainer trainer(gpu, tok, *task, cfg);
  const at::Tensor before = gpu.named_parameters()[0].tensor.detach().cpu().clone();
  StepStats s = trainer.step();
  EXPECT_TRUE(std::isfinite(s.loss));
  EXPECT_TRUE(std::isfinite(s.grad_norm));
  EXPECT_GT(s.grad_norm, 0);
  EXPECT_TRUE(gpu.named_parameters()[0].tensor.is_cuda());
  EXPECT_FALSE(at::equal(before, gpu.named_parameters()[0].tensor.detach().cpu()))
      << "AdamW did not update the parameters on the GPU";
}

}  // namespace
}  // namespace cohort::grpo
