// Malformed tokenizer files: each error must name the file and the offending entry.
#include "models/tokenizer/tokenizer_files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "models/tokenizer/bpe_tokenizer.h"
#include "runtime/error.h"
#include "tokenizer_test_support.h"

namespace ethereal {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

// Writes the hand-made tokenizer.json after `edit` changed it, loads it, and returns the error
// message (or fails the test when loading succeeds).
std::string load_error(const std::function<void(json&)>& edit, std::string* path_out = nullptr) {
  testing::TemporaryDirectory dir;
  json content = testing::handmade_tokenizer_json();
  edit(content);
  const std::filesystem::path path = dir / "tokenizer.json";
  testing::write_file(path, content.dump());
  if (path_out != nullptr)
    *path_out = path.string();
  try {
    BpeTokenizer::from_tokenizer_json(path);
  } catch (const InvalidInputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading succeeded";
  return "";
}

TEST(TokenizerJsonErrors, InvalidJsonNamesFileAndByte) {
  testing::TemporaryDirectory dir;
  const std::filesystem::path path = dir / "tokenizer.json";
  testing::write_file(path, "{\"model\": {\"vocab\": {\"a\": 1,, }}}");
  try {
    read_tokenizer_json(path);
    FAIL() << "invalid JSON was accepted";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path.string() + ": invalid JSON at byte 29"));
    EXPECT_THAT(e.what(), HasSubstr("line 1, column 29"));
  }
}

TEST(TokenizerJsonErrors, EmptyFileIsInvalidJson) {
  testing::TemporaryDirectory dir;
  const std::filesystem::path path = dir / "tokenizer.json";
  testing::write_file(path, "");
  try {
    read_tokenizer_json(path);
    FAIL() << "an empty file was accepted";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr(path.string() + ": invalid JSON at byte 1"));
  }
}

TEST(TokenizerJsonErrors, MissingFileIsNamed) {
  testing::TemporaryDirectory dir;
  try {
    read_tokenizer_json(dir / "absent.json");
    FAIL() << "a missing file was accepted";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("absent.json: file not found"));
  }
}

TEST(TokenizerJsonErrors, MissingModel) {
  std::string path;
  const std::string message = load_error([](json& j) { j.erase("model"); }, &path);
  EXPECT_THAT(message, HasSubstr(path + ": model is missing"));
}

TEST(TokenizerJsonErrors, VocabNotAnObject) {
  const std::string message = load_error([](json& j) { j["model"]["vocab"] = json::array(); });
  EXPECT_THAT(message, HasSubstr("model.vocab must be a JSON object, found array"));
}

TEST(TokenizerJsonErrors, NonIntegerId) {
  const std::string message = load_error([](json& j) { j["model"]["vocab"]["ab"] = "257"; });
  EXPECT_THAT(message, HasSubstr("model.vocab[\"ab\"] must be a non-negative 32-bit integer id"));
}

TEST(TokenizerJsonErrors, MergeWithUnknownToken) {
  const std::string message = load_error([](json& j) { j["model"]["merges"][3] = "a zz"; });
  EXPECT_THAT(message, HasSubstr("model.merges[3] (\"a zz\") references the token \"zz\""));
}

TEST(TokenizerJsonErrors, MergeResultNotInVocabulary) {
  const std::string message = load_error([](json& j) { j["model"]["merges"][0] = "c b"; });
  EXPECT_THAT(message, HasSubstr("model.merges[0] (\"c b\") produces \"cb\""));
}

TEST(TokenizerJsonErrors, MalformedMergeEntry) {
  const std::string message = load_error([](json& j) { j["model"]["merges"][2] = "abc"; });
  EXPECT_THAT(message, HasSubstr("model.merges[2] must be \"left right\""));
  EXPECT_THAT(message, HasSubstr("found \"abc\""));
}

TEST(TokenizerJsonErrors, DuplicateIds) {
  const std::string message = load_error([](json& j) { j["model"]["vocab"]["ab"] = 256; });
  EXPECT_THAT(message, HasSubstr("have the same id 256"));
  EXPECT_THAT(message, HasSubstr("\"ab\""));
  EXPECT_THAT(message, HasSubstr("\"bc\""));
}

TEST(TokenizerJsonErrors, AddedTokenTakesRegularId) {
  const std::string message = load_error([](json& j) { j["added_tokens"][0]["id"] = 257; });
  EXPECT_THAT(message,
              HasSubstr("added token \"<|im_start|>\" has id 257, which belongs to the regular "
                        "token \"ab\""));
}

TEST(TokenizerJsonErrors, AddedTokensShareId) {
  const std::string message = load_error([](json& j) { j["added_tokens"][1]["id"] = 300; });
  EXPECT_THAT(message, HasSubstr("added tokens \"<|im_start|>\" and \"<|im_end|>\" have the "
                                 "same id 300"));
}

TEST(TokenizerJsonErrors, MissingByteSymbol) {
  const std::string message = load_error([](json& j) {
    j["model"]["vocab"].erase("A");
    j["model"]["merges"] = json::array();
  });
  EXPECT_THAT(message, HasSubstr("the byte symbol \"A\" (byte 0x41) is missing"));
}

TEST(TokenizerJsonErrors, TokenOutsideByteAlphabet) {
  const std::string message = load_error([](json& j) { j["model"]["vocab"]["\u4e2d"] = 280; });
  EXPECT_THAT(message, HasSubstr("token \"\u4e2d\" (id 280) is not byte-level text"));
}

TEST(TokenizerJsonErrors, OtherPreTokenizerPattern) {
  const std::string message = load_error(
      [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+"; });
  EXPECT_THAT(message, HasSubstr("pre_tokenizer"));
  EXPECT_THAT(message, HasSubstr("is not supported"));
}

TEST(TokenizerJsonErrors, OtherNormalizer) {
  const std::string message = load_error([](json& j) { j["normalizer"] = {{"type", "NFKC"}}; });
  EXPECT_THAT(message, HasSubstr("normalizer {\"type\":\"NFKC\"} is not supported"));
}

TEST(TokenizerJsonErrors, UnsupportedModelOptions) {
  EXPECT_THAT(load_error([](json& j) { j["model"]["type"] = "WordPiece"; }),
              HasSubstr("model.type is \"WordPiece\", expected \"BPE\""));
  EXPECT_THAT(load_error([](json& j) { j["model"]["dropout"] = 0.1; }),
              HasSubstr("model.dropout is set"));
  EXPECT_THAT(load_error([](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }),
              HasSubstr("model.end_of_word_suffix is \"</w>\""));
  EXPECT_THAT(load_error([](json& j) { j["model"]["byte_fallback"] = true; }),
              HasSubstr("model.byte_fallback is true"));
  EXPECT_THAT(load_error([](json& j) { j["added_tokens"][2]["single_word"] = true; }),
              HasSubstr("added_tokens[2].single_word is true"));
  EXPECT_THAT(load_error([](json& j) {
                j["decoder"] = {{"type", "WordPiece"}};
              }),
              HasSubstr("decoder {\"type\":\"WordPiece\"} is not supported"));
}

TEST(TokenizerJsonErrors, AddedTokenWithoutContent) {
  EXPECT_THAT(load_error([](json& j) { j["added_tokens"][0].erase("content"); }),
              HasSubstr("added_tokens[0].content is missing"));
  EXPECT_THAT(load_error([](json& j) { j["added_tokens"][0]["content"] = ""; }),
              HasSubstr("added token with id 300 and content \"\" is invalid"));
}

// vocab.json + merges.txt written from the hand-made vocabulary, with optional edits.
struct SlowFiles {
  testing::TemporaryDirectory dir;
  std::filesystem::path vocab = dir / "vocab.json";
  std::filesystem::path merges = dir / "merges.txt";

  explicit SlowFiles(const std::string& merges_text) {
    testing::write_file(vocab, testing::handmade_tokenizer_json()["model"]["vocab"].dump());
    testing::write_file(merges, merges_text);
  }
};

std::string slow_load_error(const SlowFiles& files) {
  try {
    BpeTokenizer::from_vocab_and_merges(files.vocab, files.merges);
  } catch (const InvalidInputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading succeeded";
  return "";
}

TEST(MergesTxtErrors, UnknownTokenNamesLine) {
  const SlowFiles files("#version: 0.2\nb c\na b\nq zz\n");
  EXPECT_THAT(slow_load_error(files),
              HasSubstr(files.merges.string() + " line 4 (\"q zz\") references the token \"zz\""));
}

TEST(MergesTxtErrors, MalformedLine) {
  const SlowFiles files("#version: 0.2\r\nb c\r\na  b\r\n");
  EXPECT_THAT(slow_load_error(files),
              HasSubstr(files.merges.string() +
                        " line 3: expected two tokens separated by one space, found \"a  b\""));
}

TEST(MergesTxtLoading, AcceptsCrLfAndBlankLines) {
  const SlowFiles files("#version: 0.2\r\nb c\r\n\r\na b\r\n");
  const BpeTokenizer tokenizer = BpeTokenizer::from_vocab_and_merges(files.vocab, files.merges);
  EXPECT_EQ(tokenizer.merge_count(), 2u);
  EXPECT_EQ(tokenizer.encode("ab"), std::vector<std::int32_t>{257});
}

TEST(AddedTokensFiles, ConflictingIdsNameBothFiles) {
  SlowFiles files("b c\n");
  const std::filesystem::path config = files.dir / "tokenizer_config.json";
  const std::filesystem::path added = files.dir / "added_tokens.json";
  testing::write_file(config, R"({"added_tokens_decoder": {"300": {"content": "<|im_start|>"}}})");
  testing::write_file(added, R"({"<|im_end|>": 300})");
  try {
    read_vocab_and_merges(files.vocab, files.merges, added, config);
    FAIL() << "conflicting added tokens were accepted";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr(added.string() + " gives id 300 to \"<|im_end|>\", but " +
                                    config.string() + " gives it to \"<|im_start|>\""));
  }
}

TEST(AddedTokensFiles, AddedTokensJsonAloneDefinesTokens) {
  SlowFiles files("b c\n");
  testing::write_file(files.dir / "added_tokens.json", R"({"<|im_start|>": 300})");
  const BpeTokenizer tokenizer = BpeTokenizer::from_directory(files.dir.path());
  EXPECT_EQ(tokenizer.token_id("<|im_start|>"), 300);
  EXPECT_EQ(tokenizer.encode("<|im_start|>bc"), (std::vector<std::int32_t>{300, 256}));
}

TEST(TokenizerDirectory, EmptyFolderIsRejected) {
  testing::TemporaryDirectory dir;
  try {
    BpeTokenizer::from_directory(dir.path());
    FAIL() << "an empty folder was accepted";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no tokenizer files found in " + dir.path().string()));
  }
}

}  // namespace
}  // namespace ethereal
