// Round cards (exchange/round_card.h): what the coordinator signs, a node reads back field for
// field; a card altered anywhere after signing, signed by another key, or naming a file that
// could leave its folder is refused with the field named.
#include "exchange/round_card.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "protocol/digest.h"

namespace cohort::exchange {
namespace {

using nlohmann::json;

RoundCard sample_card() {
  RoundCard c;
  c.round_id = "gsm8k-qwen-0.5b";
  c.addresses = {"203.0.113.7:7070", "[2001:db8::7]:7070"};
  c.status_url = "http://203.0.113.7:8080/status";
  c.model_name = "Qwen2.5-0.5B-Instruct";
  c.parameters = 494032768;
  c.policy_dtype = "bf16";
  c.config_blake2b = std::string(64, 'a');
  c.task = "dataset:math";
  c.gradient_codec = "topk";
  c.kl_beta = 0.04;
  c.files = {{"dataset", "train.jsonl", 4100000, std::string(64, 'b'), {"http://203.0.113.7:8080"}},
             {"tokenizer", "tokenizer.json", 7000000, std::string(64, 'c'),
              {"http://203.0.113.7:8080", "https://mirror.example/round"}}};
  c.memory_bytes = {{"fp32", 9000000000ull}, {"bf16", 5000000000ull}};
  c.snapshot_bytes = 988000000;
  c.min_down_mbps = 20;
  c.min_up_mbps = 5;
  c.mirrors = {"https://mirror.example/round"};
  c.issued_ms = 1796000000000;
  return c;
}

TEST(RoundCard, ReadsBackWhatWasSigned) {
  const protocol::Identity id = protocol::Identity::generate();
  const RoundCard in = sample_card();
  const RoundCard out = read_round_card(sign_round_card(in, id));
  EXPECT_EQ(out.coordinator_key, id.id().hex());
  EXPECT_EQ(out.round_id, in.round_id);
  EXPECT_EQ(out.addresses, in.addresses);
  EXPECT_EQ(out.status_url, in.status_url);
  EXPECT_EQ(out.model_name, in.model_name);
  EXPECT_EQ(out.parameters, in.parameters);
  EXPECT_EQ(out.policy_dtype, in.policy_dtype);
  EXPECT_EQ(out.task, in.task);
  EXPECT_EQ(out.gradient_codec, in.gradient_codec);
  EXPECT_DOUBLE_EQ(out.kl_beta, in.kl_beta);
  ASSERT_EQ(out.files.size(), 2u);
  EXPECT_EQ(out.files[1].name, "tokenizer.json");
  EXPECT_EQ(out.files[1].size, 7000000u);
  EXPECT_EQ(out.files[1].sources, in.files[1].sources);
  EXPECT_EQ(out.memory_bytes, in.memory_bytes);
  EXPECT_EQ(out.snapshot_bytes, in.snapshot_bytes);
  EXPECT_EQ(out.mirrors, in.mirrors);
  EXPECT_EQ(out.issued_ms, in.issued_ms);
}

// The signature is Ed25519 over BLAKE2b-256("cohort/round-card/v1" || 0x00 || card), the card
// being the exact string in the file (docs/PROTOCOL.md): checked here from the primitives.
TEST(RoundCard, SignatureCoversTheCardStringUnderItsDomain) {
  const protocol::Identity id = protocol::Identity::generate();
  const json file = json::parse(sign_round_card(sample_card(), id));
  const std::string body = file["card"].get<std::string>();
  std::string message = "cohort/round-card/v1";
  message.push_back('\0');
  message += body;
  const protocol::Digest d = protocol::blake2b_256(protocol::as_bytes(message));
  const auto sig = protocol::from_hex(file["signature"].get<std::string>());
  ASSERT_TRUE(sig.has_value());
  EXPECT_TRUE(protocol::verify_signature(id.id(), protocol::ByteView(d.data(), d.size()),
                                         protocol::ByteView(sig->data(), sig->size())));
}

// The worked example of docs/PROTOCOL.md (section 12), signed by the RFC 8032 test key 1 with an
// independent implementation (Python's `cryptography`): this reader verifies it.
TEST(RoundCard, TheDocumentedExampleVerifies) {
  std::ifstream in(std::string(COHORT_SOURCE_DIR) + "/docs/round-card-example.json");
  ASSERT_TRUE(in) << "docs/round-card-example.json";
  std::stringstream ss;
  ss << in.rdbuf();
  const RoundCard c = read_round_card(ss.str());
  EXPECT_EQ(c.coordinator_key, "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  EXPECT_EQ(c.round_id, "gsm8k-qwen-0.5b");
  EXPECT_EQ(c.parameters, 494032768u);
  EXPECT_EQ(c.memory_bytes.at("bf16"), 8442223104u);
}

std::string error_of(const std::string& text) {
  try {
    (void)read_round_card(text);
  } catch (const CardError& e) {
    return e.what();
  }
  return "";
}

TEST(RoundCard, AnAlteredCardIsRefused) {
  const protocol::Identity id = protocol::Identity::generate();
  json file = json::parse(sign_round_card(sample_card(), id));
  std::string body = file["card"].get<std::string>();
  // Another coordinator address: what a man in the middle would change.
  const auto at = body.find("203.0.113.7:7070");
  ASSERT_NE(at, std::string::npos);
  body.replace(at, 16, "198.51.100.9:707");
  file["card"] = body;
  EXPECT_NE(error_of(file.dump()).find("signature does not verify"), std::string::npos);
}

TEST(RoundCard, ACardReSignedByAnotherKeyNamesThatKey) {
  // Anyone can sign a card with their own key; it verifies, and names them: the node compares
  // coordinator_key with the key it pinned.
  const protocol::Identity mallory = protocol::Identity::generate();
  EXPECT_EQ(read_round_card(sign_round_card(sample_card(), mallory)).coordinator_key,
            mallory.id().hex());
  // Claiming someone else's key without their signature fails.
  const protocol::Identity coordinator = protocol::Identity::generate();
  json file = json::parse(sign_round_card(sample_card(), mallory));
  json card = json::parse(file["card"].get<std::string>());
  card["coordinator_key"] = coordinator.id().hex();
  file["card"] = card.dump(2);
  EXPECT_NE(error_of(file.dump()).find("signature does not verify"), std::string::npos);
}

// A round with many mirrors makes a card of several KiB: it reads back whole.
TEST(RoundCard, ALargeCardReadsBack) {
  const protocol::Identity id = protocol::Identity::generate();
  RoundCard c = sample_card();
  for (int i = 0; i < 15; ++i) c.mirrors.push_back("https://mirror-" + std::to_string(i) + ".example/round");
  for (auto& f : c.files) f.sources = c.mirrors;
  const std::string text = sign_round_card(c, id);
  ASSERT_GT(text.size(), 3000u);  // well over the 2,048 bytes any field inside the card may hold
  EXPECT_EQ(read_round_card(text).files[0].sources.size(), 16u);
}

TEST(RoundCard, FieldsAreCheckedByName) {
  const protocol::Identity id = protocol::Identity::generate();
  auto with = [&](auto change) {
    RoundCard c = sample_card();
    change(c);
    return error_of(sign_round_card(c, id));
  };
  EXPECT_NE(with([](RoundCard& c) { c.files[0].name = "../../.bashrc"; }).find("'card.files[0].name' must be a plain file name"),
            std::string::npos);
  EXPECT_NE(with([](RoundCard& c) { c.files[1].blake2b = "zz"; }).find("'card.files[1].blake2b'"),
            std::string::npos);
  EXPECT_NE(with([](RoundCard& c) { c.files[0].role = "binary"; }).find("'card.files[0].role'"),
            std::string::npos);
  EXPECT_NE(with([](RoundCard& c) { c.files[1] = c.files[0]; }).find("names a file twice"), std::string::npos);
  EXPECT_NE(with([](RoundCard& c) { c.addresses.clear(); }).find("'card.addresses'"), std::string::npos);
  EXPECT_NE(with([](RoundCard& c) { c.addresses = {"no-port"}; }).find("HOST:PORT"), std::string::npos);
  EXPECT_NE(with([](RoundCard& c) { c.round_id.clear(); }).find("'card.round_id' must not be empty"),
            std::string::npos);
  EXPECT_NE(error_of("{\"format\": \"cohort-round-card/9\", \"card\": \"{}\", \"signature\": \"\"}")
                .find("'format' is not cohort-round-card/1"),
            std::string::npos);
  EXPECT_NE(error_of("<html>a captive portal</html>").find("not JSON"), std::string::npos);
}

}  // namespace
}  // namespace cohort::exchange
