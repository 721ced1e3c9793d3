// A lease worked by 1, 2 or 3 CPU workers on uneven splits gives the same completions, summed
// gradient and unit counts as one worker on the whole lease (the real rollout, rewards and GRPO
// gradient of a small model); a failing worker surfaces with its reason and the next lease on
// the same device group is right again. The tensor adapter feeds CPU tensors to the twin.
#include "node/lease_work.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "grpo/tokenizer.h"
#include "node/collective_torch.h"
#include "node/nccl_collective.h"
#include "tests/support/tiny_base.h"

namespace cohort::node {
namespace {

using test::one_digit_addition;
using test::tiny_model_config;

// The weak base of tests/support/tiny_base.h, as named flat tensors for DeviceGroup::load.
const std::vector<std::pair<std::string, std::vector<float>>>& base_weights() {
  static const auto weights = [] {
    grpo::Model m(tiny_model_config(), 7);
    test::warm_up_tiny_base(m);
    std::vector<std::pair<std::string, std::vector<float>>> out;
    for (const auto& p : m.named_parameters()) {
      const at::Tensor t = p.tensor.detach().contiguous();
      out.emplace_back(p.name,
                       std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel()));
    }
    return out;
  }();
  return weights;
}

std::unique_ptr<DeviceGroup> base_group(int workers) {
  auto devices = make_cpu_device_group(tiny_model_config(), workers);
  for (const auto& [name, values] : base_weights()) devices->load(name, values);
  return devices;
}

struct Lease {
  std::vector<uint64_t> indices, seeds;
};

Lease make_lease(int groups) {
  Lease l;
  for (int i = 0; i < groups; ++i) {
    l.indices.push_back(3 + 11 * i);
    l.seeds.push_back(9000 + 31 * i);
  }
  return l;
}

std::vector<GroupRange> ranges(std::vector<int> sizes) {
  std::vector<GroupRange> r;
  int at = 0;
  for (int s : sizes) {
    r.push_back({at, at + s});
    at += s;
  }
  return r;
}

class LeaseWork : public ::testing::Test {
 protected:
  grpo::CharTokenizer tok;
  std::unique_ptr<grpo::Task> task = grpo::make_task(one_digit_addition());
  grpo::GrpoConfig cfg = [] {
    grpo::GrpoConfig c;
    c.task = one_digit_addition();
    c.group_size = 4;
    c.sampling.max_new_tokens = 8;
    c.loss.beta = 0;
    return c;
  }();

  LeaseGradient work(int workers, const std::vector<int>& sizes, const Lease& lease,
                     int fail = -1) {
    auto devices = base_group(workers);
    exchange::ParamLayout layout(devices->replica(0));
    LeaseContext ctx{*task, tok, cfg, layout, fail};
    return compute_lease(*devices, ctx, lease.indices, lease.seeds, ranges(sizes));
  }

  static void expect_same(const LeaseGradient& got, const LeaseGradient& ref,
                          const std::string& what) {
    // The same completions: groups are sampled with their own seeds wherever they run.
    std::vector<std::vector<int64_t>> a, b;
    std::vector<float> ra, rb;
    for (const auto& s : got.shares) {
      a.insert(a.end(), s.batch.rollout.completions.begin(), s.batch.rollout.completions.end());
      ra.insert(ra.end(), s.batch.rewards.begin(), s.batch.rewards.end());
    }
    for (const auto& s : ref.shares) {
      b.insert(b.end(), s.batch.rollout.completions.begin(), s.batch.rollout.completions.end());
      rb.insert(rb.end(), s.batch.rewards.begin(), s.batch.rewards.end());
    }
    ASSERT_EQ(a, b) << what;
    EXPECT_EQ(ra, rb) << what;
    EXPECT_DOUBLE_EQ(got.units, ref.units) << what;
    EXPECT_DOUBLE_EQ(got.tokens, ref.tokens) << what;
    EXPECT_NEAR(got.loss, ref.loss, 1e-4 * (1 + std::abs(ref.loss))) << what;
    ASSERT_EQ(got.grad.size(), ref.grad.size());
    double max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < ref.grad.size(); ++i) {
      max_ref = std::max(max_ref, double(std::abs(ref.grad[i])));
      max_diff = std::max(max_diff, double(std::abs(got.grad[i] - ref.grad[i])));
    }
    EXPECT_GT(max_ref, 0) << what << ": the reference gradient is zero, the test proves nothing";
    EXPECT_LE(max_diff, 1e-4 * max_ref) << what;
  }
};

TEST_F(LeaseWork, WorkersOnUnevenSplitsEqualOneWorkerOnTheWholeLease) {
  const Lease lease = make_lease(7);
  for (auto scale : {grpo::AdvantageScale::group, grpo::AdvantageScale::batch}) {
    for (auto loss : {grpo::LossType::grpo, grpo::LossType::dapo}) {
      cfg.scale = scale;
      cfg.loss.loss = loss;
      const LeaseGradient ref = work(1, {7}, lease);
      ASSERT_GT(ref.units, 0);
      const std::string tag =
          "scale " + std::to_string(int(scale)) + " loss " + std::to_string(int(loss));
      expect_same(work(2, {2, 5}, lease), ref, tag + " split 2|5");
      expect_same(work(2, {6, 1}, lease), ref, tag + " split 6|1");
      expect_same(work(3, {1, 4, 2}, lease), ref, tag + " split 1|4|2");
      expect_same(work(3, {3, 0, 4}, lease), ref, tag + " split 3|0|4");
    }
  }
}

TEST_F(LeaseWork, FailingWorkerReportsItsReasonAndTheNextLeaseWorks) {
  const Lease lease = make_lease(5);
  const LeaseGradient ref = work(1, {5}, lease);
  auto devices = base_group(3);
  exchange::ParamLayout layout(devices->replica(0));
  LeaseContext failing{*task, tok, cfg, layout, 1};
  try {
    compute_lease(*devices, failing, lease.indices, lease.seeds, ranges({2, 2, 1}));
    FAIL() << "expected WorkerError";
  } catch (const WorkerError& e) {
    EXPECT_EQ(e.worker(), 1);
    EXPECT_NE(e.reason().find("injected fault"), std::string::npos) << e.reason();
    EXPECT_NE(std::string(e.what()).find("worker 1 failed"), std::string::npos) << e.what();
  }
  LeaseContext ok{*task, tok, cfg, layout};
  expect_same(compute_lease(*devices, ok, lease.indices, lease.seeds, ranges({2, 2, 1})), ref,
              "after the failure");
}

TEST_F(LeaseWork, RunReportsTheLowestFailingWorkerAfterAllFinished) {
  auto devices = make_cpu_device_group(tiny_model_config(), 3);
  std::vector<int> ran(3, 0);
  try {
    devices->run([&](int w, grpo::Model&) {
      ran[w] = 1;
      if (w >= 1) throw std::runtime_error("device " + std::to_string(w) + " lost");
    });
    FAIL() << "expected WorkerError";
  } catch (const WorkerError& e) {
    EXPECT_EQ(e.worker(), 1);
    EXPECT_EQ(e.reason(), "device 1 lost");
  }
  EXPECT_EQ(ran, (std::vector<int>{1, 1, 1}));
}

// GPU workers: the same lease on every visible GPU (one worker each, NCCL between them) against
// one CPU worker on the whole lease. Sampling on a GPU draws from CUDA's generator, so the
// completions differ from the CPU's; what must agree is the gradient of the completions the GPU
// workers sampled, recomputed on the CPU. Skips (saying why) without a CUDA LibTorch and a GPU.
TEST_F(LeaseWork, GpuWorkersEqualTheCpuGradientOfTheirCompletions) {
  std::string why;
  const int n = cuda_device_count(&why);
  if (!torch::cuda::is_available() || n == 0)
    GTEST_SKIP() << "needs a CUDA build of LibTorch and a GPU: " << (torch::cuda::is_available() ? why : "CPU-only LibTorch");
  std::vector<int> gpus;
  for (int i = 0; i < n; ++i) gpus.push_back(i);
  auto gpu = make_gpu_device_group(tiny_model_config(), gpus);
  for (const auto& [name, values] : base_weights()) gpu->load(name, values);
  exchange::ParamLayout layout(gpu->replica(0));
  LeaseContext ctx{*task, tok, cfg, layout};
  const Lease lease = make_lease(2 * n + 1);
  std::vector<int> sizes(n, 2);
  sizes.back() += 1;
  const LeaseGradient got = compute_lease(*gpu, ctx, lease.indices, lease.seeds, ranges(sizes));

  // The CPU reference: one worker, the GPU workers' completions laid out and differentiated.
  auto cpu = base_group(1);
  grpo::Model& m = cpu->replica(0);
  std::vector<std::vector<int64_t>> prompts, completions;
  std::vector<float> rewards;
  for (const auto& share : got.shares) {
    for (const auto& p : share.batch.prompts) prompts.push_back(grpo::encode_prompt(tok, p));
    completions.insert(completions.end(), share.batch.rollout.completions.begin(), share.batch.rollout.completions.end());
    rewards.insert(rewards.end(), share.batch.rewards.begin(), share.batch.rewards.end());
  }
  grpo::Rollout r = grpo::layout(prompts, cfg.group_size, completions, cfg.sampling.max_new_tokens, tok.pad_id());
  // The sampling policy's log-probs as the GPU workers recorded them (zero-padded per share).
  r.logprobs = torch::zeros(r.logprobs.sizes());
  int64_t row = 0;
  for (const auto& share : got.shares) {
    const at::Tensor lp = share.batch.rollout.logprobs.to(at::kCPU);
    if (lp.numel() == 0) continue;
    r.logprobs.narrow(0, row, lp.size(0)).narrow(1, 0, lp.size(1)).copy_(lp);
    row += lp.size(0);
  }
  const auto adv = grpo::group_advantages(rewards, cfg.group_size, cfg.scale);
  const grpo::LossSums sums = grpo::accumulate_gradient(m, nullptr, r, adv, cfg);
  std::vector<float> ref(layout.total);
  exchange::flatten_grads(m, layout, ref);
  EXPECT_DOUBLE_EQ(got.units, sums.units);
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, double(std::abs(ref[i])));
    max_diff = std::max(max_diff, double(std::abs(got.grad[i] - ref[i])));
  }
  EXPECT_GT(max_ref, 0);
  EXPECT_LE(max_diff, 1e-3 * max_ref) << "GPU (TF32 off, FP32) against CPU";
}

TEST(GpuDevices, ListsParseAndMistakesAreNamed) {
  EXPECT_EQ(parse_gpu_list("cuda:0,2"), (std::vector<int>{0, 2}));
  EXPECT_EQ(parse_gpu_list("cuda:3"), (std::vector<int>{3}));
  for (const char* bad : {"cuda:", "cuda:a", "cuda:0,0", "cuda:0,,1", "gpu:0", "cuda0"})
    EXPECT_THROW(parse_gpu_list(bad), Error) << bad;
  if (!torch::cuda::is_available()) {
    // A CPU-only LibTorch: asking for GPU workers says so instead of crashing.
    try {
      make_gpu_device_group(tiny_model_config(), {0});
      FAIL() << "expected cohort::Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
    }
  }
}

TEST(CollectiveTorch, CpuTensorsReduceThroughTheTwin) {
  torch::manual_seed(3);
  std::vector<at::Tensor> flat = {torch::randn({1000}), torch::randn({1000}), torch::randn({1000})};
  const at::Tensor expected = (flat[0] + flat[1]) + flat[2];
  std::vector<std::vector<double>> c = {{1}, {2}, {4}};
  std::vector<std::span<double>> counts(c.begin(), c.end());
  auto twin = make_cpu_collective(3);
  reduce_tensors(*twin, flat, counts);
  EXPECT_TRUE(torch::equal(flat[0], expected));
  EXPECT_EQ(c[0][0], 7);
  std::vector<at::Tensor> bad = {torch::zeros({10}), torch::zeros({10}, torch::kDouble),
                                 torch::zeros({10})};
  EXPECT_THROW(reduce_tensors(*twin, bad, counts), Error);
  broadcast_tensors(*twin, flat);
  EXPECT_TRUE(torch::equal(flat[2], expected));
}

}  // namespace
}  // namespace cohort::node
