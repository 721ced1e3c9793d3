// JSONL datasets: GSM8K's format and the generic prompt/answer form parsed exactly, the seeded
// shuffle and held-out split deterministic and disjoint, malformed records named by line, and
// the math rewards applied to completions of real GSM8K problems.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "common/check.h"
#include "grpo/dataset.h"

namespace cohort::grpo {
namespace {

namespace fs = std::filesystem;

// The first records of GSM8K's train split, verbatim.
const char* kGsm8k[] = {
    R"({"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"})",
    R"({"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?", "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"})",
    R"({"question": "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How much more money does Betty need to buy the wallet?", "answer": "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5"})",
    R"({"question": "Julie is reading a 120-page book. Yesterday, she was able to read 12 pages and today, she read twice as many pages as yesterday. If she wants to read half of the remaining pages tomorrow, how many pages should she read?", "answer": "Maila read 12 x 2 = <<12*2=24>>24 pages today.\nSo she was able to read a total of 12 + 24 = <<12+24=36>>36 pages since yesterday.\nThere are 120 - 36 = <<120-36=84>>84 pages left to be read.\nSince she wants to read half of the remaining pages tomorrow, then she should read 84/2 = <<84/2=42>>42 pages.\n#### 42"})",
    R"({"question": "James writes a 3-page letter to 2 different friends twice a week.  How many pages does he write a year?", "answer": "He writes each friend 3*2=<<3*2=6>>6 pages a week\nSo he writes 6*2=<<6*2=12>>12 pages every week\nThat means he writes 12*52=<<12*52=624>>624 pages a year\n#### 624"})",
};

class Dataset : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cohort_ds_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::vector<std::string>& lines) {
    const fs::path p = dir_ / name;
    std::ofstream out(p);
    for (const auto& l : lines) out << l << "\n";
    return p.string();
  }
  std::string gsm8k_file(int copies) {
    // Distinct problems: the five real ones, with numbered variants to make a larger file.
    std::vector<std::string> lines;
    for (int c = 0; c < copies; ++c)
      for (const char* r : kGsm8k) {
        std::string s = r;
        if (c > 0) s.insert(s.find("\"question\": \"") + 13, "(" + std::to_string(c) + ") ");
        lines.push_back(s);
      }
    return write("train.jsonl", lines);
  }
  fs::path dir_;
};

TEST_F(Dataset, ParsesGsm8kAndGenericRecords) {
  auto ex = read_jsonl_dataset(gsm8k_file(1));
  ASSERT_EQ(ex.size(), 5u);
  EXPECT_EQ(ex[0].answer, "72");
  EXPECT_EQ(ex[1].answer, "10");
  EXPECT_EQ(ex[4].answer, "624");
  EXPECT_EQ(ex[1].prompt.substr(0, 20), "Weng earns $12 an ho");
  EXPECT_EQ(ex[0].solution, "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                            "<<48+24=72>>72 clips altogether in April and May.");

  auto generic = read_jsonl_dataset(write("g.jsonl", {R"({"prompt": "2+2?", "answer": "4"})", "",
                                                      R"({"prompt": "Half of 3?", "answer": 1.5})"}));
  ASSERT_EQ(generic.size(), 2u);
  EXPECT_EQ(generic[0].prompt, "2+2?");
  EXPECT_EQ(generic[1].answer, "1.5");
  EXPECT_TRUE(generic[1].solution.empty());
}

TEST_F(Dataset, MalformedRecordsNameTheLine) {
  auto err = [&](const std::vector<std::string>& lines) {
    try {
      read_jsonl_dataset(write("bad.jsonl", lines));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err({kGsm8k[0], "{not json"}).find("bad.jsonl:2: not valid JSON"), std::string::npos);
  EXPECT_NE(err({R"({"text": "x", "answer": "1"})"}).find(":1: needs a string \"question\""), std::string::npos);
  EXPECT_NE(err({kGsm8k[0], kGsm8k[1], R"({"question": "q"})"}).find(":3: needs an \"answer\""), std::string::npos);
  EXPECT_NE(err({R"({"prompt": "q", "answer": ""})"}).find("empty answer"), std::string::npos);
  EXPECT_NE(err({"[1, 2]"}).find("JSON object"), std::string::npos);
  EXPECT_NE(err({""}).find("has no records"), std::string::npos);
  EXPECT_THROW(read_jsonl_dataset((dir_ / "missing.jsonl").string()), Error);
}

TEST_F(Dataset, SeededShuffleAndDisjointHeldOutSplit) {
  const std::string path = gsm8k_file(20);  // 100 problems
  TaskSpec spec;
  spec.dataset = path;
  spec.held_out_percent = 10;
  auto a = make_task(spec), b = make_task(spec);
  auto* da = dynamic_cast<DatasetTask*>(a.get());
  ASSERT_NE(da, nullptr);
  EXPECT_EQ(da->train_size(), 90u);
  EXPECT_EQ(da->eval_size(), 10u);

  std::set<std::string> train, eval;
  std::vector<std::string> order_a, order_b;
  for (uint64_t i = 0; i < 90; ++i) {
    order_a.push_back(a->train_prompt(i).text);
    order_b.push_back(b->train_prompt(i).text);
    train.insert(order_a.back());
  }
  EXPECT_EQ(order_a, order_b);     // every peer derives the same prompt for an index
  EXPECT_EQ(train.size(), 90u);    // one epoch visits every training example once
  for (const auto& p : a->eval_prompts(10)) eval.insert(p.text);
  EXPECT_EQ(eval.size(), 10u);
  for (const auto& e : eval) EXPECT_FALSE(train.count(e)) << e;
  EXPECT_THROW(a->eval_prompts(11), Error);

  // The next epoch is another order of the same examples.
  std::vector<std::string> epoch2;
  for (uint64_t i = 90; i < 180; ++i) epoch2.push_back(a->train_prompt(i).text);
  EXPECT_NE(epoch2, order_a);
  EXPECT_EQ(std::set<std::string>(epoch2.begin(), epoch2.end()), train);

  // Another seed: another split.
  spec.seed = 99;
  auto c = make_task(spec);
  std::set<std::string> eval_c;
  for (const auto& p : c->eval_prompts(10)) eval_c.insert(p.text);
  EXPECT_NE(eval_c, eval);

  // A separate eval file is the held-out set; all of the train file trains.
  spec.eval_dataset = write("test.jsonl", {kGsm8k[2], kGsm8k[3]});
  auto d = make_task(spec);
  EXPECT_EQ(dynamic_cast<DatasetTask*>(d.get())->train_size(), 100u);
  auto ev = d->eval_prompts(2);
  EXPECT_EQ(ev[0].answer, "5");
  EXPECT_EQ(ev[1].answer, "42");

  spec.reward = "exact";
  EXPECT_THROW(make_task(spec), Error);
}

TEST_F(Dataset, ScoresCompletionsWithMathRewards) {
  TaskSpec spec;
  spec.dataset = gsm8k_file(1);
  spec.eval_dataset = spec.dataset;
  spec.format_weight = 0.5;
  auto task = make_task(spec);
  const Prompt natalia = task->eval_prompts(1)[0];
  ASSERT_EQ(natalia.answer, "72");
  auto r = task->score(natalia, "<think>48/2 = 24, 48 + 24 = 72</think>\n<answer>72</answer>");
  EXPECT_EQ(r.accuracy, 1.0);
  EXPECT_EQ(r.format, 1.0);
  EXPECT_EQ(r.total, 1.5);
  r = task->score(natalia, "She sold 72 clips.\n#### 72");
  EXPECT_EQ(r.accuracy, 1.0);
  EXPECT_EQ(r.format, 0.0);
  r = task->score(natalia, "<think>48 + 48 = 96</think><answer>96</answer>");
  EXPECT_EQ(r.accuracy, 0.0);
  EXPECT_EQ(r.total, 0.5);
  EXPECT_EQ(task->score(natalia, "72").total, 0.0);  // no committed answer
  // The supervised warm-up target: the worked solution without calculator annotations.
  EXPECT_EQ(task->reference_completion(natalia),
            "<think>\nNatalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips "
            "altogether in April and May.\n</think>\n<answer>72</answer>");
}

}  // namespace
}  // namespace cohort::grpo
