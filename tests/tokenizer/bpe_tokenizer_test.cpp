#include "models/tokenizer/bpe_tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "runtime/error.h"
#include "tokenizer_test_support.h"

namespace ethereal {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using testing::Handmade;
using ::testing::HasSubstr;
using ::testing::Not;

std::int32_t byte_id(char byte) {
  const auto& order = byte_level::bytes_in_alphabet_order();
  const auto it = std::find(order.begin(), order.end(), static_cast<unsigned char>(byte));
  return static_cast<std::int32_t>(it - order.begin());
}

class HandmadeTokenizer : public ::testing::Test {
 protected:
  BpeTokenizer tokenizer{testing::handmade_vocabulary()};
};

TEST_F(HandmadeTokenizer, CountsTokensAndMerges) {
  EXPECT_EQ(tokenizer.regular_token_count(), 261u);
  EXPECT_EQ(tokenizer.merge_count(), 5u);
  EXPECT_EQ(tokenizer.vocabulary_size(), Handmade::kRawEAcute + 1);
  EXPECT_EQ(tokenizer.added_tokens().size(), 7u);
}

TEST_F(HandmadeTokenizer, ByteSymbolsHaveAlphabetIds) {
  EXPECT_EQ(byte_id('a'), Handmade::kA);
  EXPECT_EQ(byte_id(' '), Handmade::kSpace);
  EXPECT_EQ(tokenizer.token_id("a"), Handmade::kA);
  EXPECT_EQ(tokenizer.token_id("\u0120"), Handmade::kSpace);
}

TEST_F(HandmadeTokenizer, LowestRankMergesFirst) {
  // "b c" (rank 0) beats "a b" (rank 1) although "a b" is further left; "a bc" then applies.
  EXPECT_THAT(tokenizer.encode("abc"), ElementsAre(Handmade::kABC));
  EXPECT_THAT(tokenizer.encode("ab"), ElementsAre(Handmade::kAB));
  EXPECT_THAT(tokenizer.encode("bc"), ElementsAre(Handmade::kBC));
  EXPECT_THAT(tokenizer.encode("cab"), ElementsAre(Handmade::kC, Handmade::kAB));
}

TEST_F(HandmadeTokenizer, EqualRanksMergeLeftmostFirst) {
  EXPECT_THAT(tokenizer.encode("aaa"), ElementsAre(Handmade::kAA, Handmade::kA));
  EXPECT_THAT(tokenizer.encode("aaaa"), ElementsAre(Handmade::kAA, Handmade::kAA));
  EXPECT_THAT(tokenizer.encode("aaaaa"), ElementsAre(Handmade::kAA, Handmade::kAA, Handmade::kA));
}

TEST_F(HandmadeTokenizer, MergesStayInsidePieces) {
  // " ab" is one piece, so "Ġ ab" merges; "a" and "b" in "a,b" are separate pieces.
  EXPECT_THAT(tokenizer.encode("ab ab"), ElementsAre(Handmade::kAB, Handmade::kSpaceAB));
  EXPECT_THAT(tokenizer.encode("1ab"), ElementsAre(byte_id('1'), Handmade::kAB));
  EXPECT_THAT(tokenizer.encode("a\nb"), ElementsAre(Handmade::kA, byte_id('\n'), Handmade::kB));
}

TEST_F(HandmadeTokenizer, UnmergedCharactersBecomeByteTokens) {
  // U+4E2D is E4 B8 AD in UTF-8.
  EXPECT_THAT(tokenizer.encode("\u4e2d"),
              ElementsAre(byte_id('\xE4'), byte_id('\xB8'), byte_id('\xAD')));
}

TEST_F(HandmadeTokenizer, AddedTokensAreNotSplit) {
  EXPECT_THAT(tokenizer.encode("<|im_start|>abc<|im_end|>"),
              ElementsAre(Handmade::kImStart, Handmade::kABC, Handmade::kImEnd));
  EXPECT_THAT(tokenizer.encode("<|im_start|><|im_start|>"),
              ElementsAre(Handmade::kImStart, Handmade::kImStart));
  EXPECT_THAT(tokenizer.encode("ab<|im_end|> ab"),
              ElementsAre(Handmade::kAB, Handmade::kImEnd, Handmade::kSpaceAB));
}

TEST_F(HandmadeTokenizer, IncompleteAddedTokenIsPlainText) {
  const std::vector<std::int32_t> ids = tokenizer.encode("<|im_start|");
  EXPECT_THAT(ids, Not(Contains(Handmade::kImStart)));
  EXPECT_EQ(tokenizer.decode(ids), "<|im_start|");
}

TEST_F(HandmadeTokenizer, LongestAddedTokenWins) {
  EXPECT_THAT(tokenizer.encode("<|x|>yz"), ElementsAre(Handmade::kXY, byte_id('z')));
  EXPECT_THAT(tokenizer.encode("<|x|>z"), ElementsAre(Handmade::kX, byte_id('z')));
}

TEST_F(HandmadeTokenizer, StripFlagsTakeNeighbouringSpaces) {
  EXPECT_THAT(tokenizer.encode("a <mask>  b"),
              ElementsAre(Handmade::kA, Handmade::kMask, Handmade::kB));
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("a <mask>  b")), "a<mask>b");
}

TEST_F(HandmadeTokenizer, NormalizedAddedTokenMatchesAfterNfc) {
  // "e" + U+0301 becomes U+00E9 under NFC; the normalized token matches only then.
  EXPECT_THAT(tokenizer.encode("e\u0301!"), ElementsAre(Handmade::kEAcute));
  EXPECT_THAT(tokenizer.encode("\u00e9!"), ElementsAre(Handmade::kEAcute));
}

TEST_F(HandmadeTokenizer, RawAddedTokenNeedsExactInput) {
  EXPECT_THAT(tokenizer.encode("\u00e9?"), ElementsAre(Handmade::kRawEAcute));
  EXPECT_THAT(tokenizer.encode("e\u0301?"),
              ElementsAre(byte_id('\xC3'), byte_id('\xA9'), byte_id('?')));
}

TEST_F(HandmadeTokenizer, DecodeInvertsEncodeUpToNfc) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"abc ab aaa", "abc ab aaa"},
      {"\u4e2d\u6587 \U0001f600 text\r\n", "\u4e2d\u6587 \U0001f600 text\r\n"},
      {"cafe\u0301", "caf\u00e9"},
      {"<|im_start|>user\nab<|im_end|>\n", "<|im_start|>user\nab<|im_end|>\n"},
      {"", ""},
  };
  for (const auto& [text, normalized] : cases) {
    EXPECT_EQ(tokenizer.decode(tokenizer.encode(text)), normalized) << "input: " << text;
  }
}

TEST_F(HandmadeTokenizer, DecodeSkipsOnlySpecialTokensWhenAsked) {
  const std::vector<std::int32_t> ids = {Handmade::kImStart, Handmade::kAB, Handmade::kMask,
                                         Handmade::kImEnd};
  EXPECT_EQ(tokenizer.decode(ids), "<|im_start|>ab<mask><|im_end|>");
  EXPECT_EQ(tokenizer.decode(ids, /*skip_special_tokens=*/true), "ab<mask>");
}

TEST_F(HandmadeTokenizer, DecodeReplacesCutCharacters) {
  // The first two bytes of U+4E2D, then "a": one U+FFFD for the cut sequence.
  const std::vector<std::int32_t> ids = {byte_id('\xE4'), byte_id('\xB8'), Handmade::kA};
  EXPECT_EQ(tokenizer.decode(ids), "\ufffda");
}

TEST_F(HandmadeTokenizer, DecodeRejectsUnknownIds) {
  for (std::int32_t bad : {-1, 299, 100000}) {
    const std::vector<std::int32_t> ids = {Handmade::kA, bad};
    try {
      tokenizer.decode(ids);
      ADD_FAILURE() << "decode accepted id " << bad;
    } catch (const InvalidInputError& e) {
      EXPECT_THAT(e.what(), HasSubstr("token id " + std::to_string(bad) + " at position 1"));
      EXPECT_THAT(e.what(), HasSubstr("ids run from 0 to 306"));
    }
  }
}

TEST_F(HandmadeTokenizer, EncodeRejectsInvalidUtf8WithOffset) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"ab\xC3(", "byte offset 2 (byte 0xC3)"},        // truncated two-byte sequence
      {"\x80", "byte offset 0 (byte 0x80)"},           // stray continuation byte
      {"abc\xC0\xAF", "byte offset 3 (byte 0xC0)"},    // overlong "/"
      {"x\xED\xA0\x80", "byte offset 1 (byte 0xED)"},  // surrogate U+D800
      {"xy\xF4\x90\x80\x80", "byte offset 2"},         // above U+10FFFF
  };
  for (const auto& [text, expected] : cases) {
    try {
      tokenizer.encode(text);
      ADD_FAILURE() << "encode accepted ill-formed UTF-8 expecting " << expected;
    } catch (const InvalidInputError& e) {
      EXPECT_THAT(e.what(), HasSubstr("not valid UTF-8"));
      EXPECT_THAT(e.what(), HasSubstr(expected));
    }
  }
}

TEST_F(HandmadeTokenizer, TokenIdFindsAddedAndRegularTokens) {
  EXPECT_EQ(tokenizer.token_id("<|im_start|>"), Handmade::kImStart);
  EXPECT_EQ(tokenizer.token_id("\u0120ab"), Handmade::kSpaceAB);
  EXPECT_EQ(tokenizer.find_token_id("<|vision_start|>"), std::nullopt);
  EXPECT_EQ(tokenizer.token_bytes(Handmade::kSpaceAB), " ab");
  EXPECT_EQ(tokenizer.token_bytes(Handmade::kImEnd), "<|im_end|>");
}

TEST_F(HandmadeTokenizer, TokenIdNamesMissingTokenAndSource) {
  try {
    tokenizer.token_id("<|vision_start|>");
    FAIL() << "token_id found a token that is not defined";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("token \"<|vision_start|>\" is not defined in handmade"));
  }
}

TEST_F(HandmadeTokenizer, ConcurrentEncodesAgree) {
  const std::vector<std::string> texts = {"abc ab aaa", "<|im_start|>ab cab<|im_end|>",
                                          "\u4e2d\u6587 aaaaa bc"};
  std::vector<std::vector<std::int32_t>> expected;
  for (const std::string& text : texts)
    expected.push_back(tokenizer.encode(text));

  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 200; ++round) {
        const std::size_t i = static_cast<std::size_t>(round + t) % texts.size();
        if (tokenizer.encode(texts[i]) != expected[i])
          ++mismatches[t];
      }
    });
  }
  for (std::thread& thread : threads)
    thread.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST(BpeTokenizerOptions, IgnoreMergesEmitsWholeVocabularyWords) {
  BpeVocabulary vocabulary = testing::handmade_vocabulary();
  // "cab" is in the vocabulary but no merge produces it.
  vocabulary.tokens.emplace_back("cab", 261);
  const BpeTokenizer merging{vocabulary};
  EXPECT_THAT(merging.encode("cab"), ElementsAre(Handmade::kC, Handmade::kAB));

  vocabulary.ignore_merges = true;
  const BpeTokenizer whole{vocabulary};
  EXPECT_THAT(whole.encode("cab"), ElementsAre(261));
  EXPECT_THAT(whole.encode("abc"), ElementsAre(Handmade::kABC));
}

TEST(BpeTokenizerOptions, WithoutNfcKeepsDecomposedInput) {
  BpeVocabulary vocabulary = testing::handmade_vocabulary();
  vocabulary.nfc = false;
  const BpeTokenizer tokenizer{vocabulary};
  EXPECT_EQ(tokenizer.decode(tokenizer.encode("cafe\u0301")), "cafe\u0301");
}

TEST(BpeTokenizerFormats, AllLayoutsEncodeAlike) {
  testing::TemporaryDirectory dir;
  const nlohmann::json tokenizer_json = testing::handmade_tokenizer_json();
  testing::write_file(dir / "tokenizer.json", tokenizer_json.dump(2));

  // The same vocabulary as vocab.json + merges.txt + tokenizer_config.json.
  testing::TemporaryDirectory slow_dir;
  testing::write_file(slow_dir / "vocab.json", tokenizer_json["model"]["vocab"].dump());
  std::string merges = "#version: 0.2\n";
  for (const auto& merge : tokenizer_json["model"]["merges"]) {
    merges += merge.get<std::string>() + "\n";
  }
  testing::write_file(slow_dir / "merges.txt", merges);
  nlohmann::json decoder = nlohmann::json::object();
  for (const auto& token : tokenizer_json["added_tokens"]) {
    nlohmann::json entry = token;
    entry.erase("id");
    decoder[std::to_string(token["id"].get<int>())] = entry;
  }
  testing::write_file(slow_dir / "tokenizer_config.json",
                      nlohmann::json{{"added_tokens_decoder", decoder}}.dump(2));

  // And merges as [left, right] pairs.
  nlohmann::json pairs_json = tokenizer_json;
  nlohmann::json pairs = nlohmann::json::array();
  for (const auto& merge : tokenizer_json["model"]["merges"]) {
    const std::string text = merge.get<std::string>();
    const std::size_t space = text.find(' ');
    pairs.push_back({text.substr(0, space), text.substr(space + 1)});
  }
  pairs_json["model"]["merges"] = pairs;
  testing::write_file(dir / "pairs.json", pairs_json.dump());

  const BpeTokenizer reference{testing::handmade_vocabulary()};
  const BpeTokenizer loaded[] = {
      BpeTokenizer::from_directory(dir.path()),
      BpeTokenizer::from_directory(slow_dir.path()),
      BpeTokenizer::from_tokenizer_json(dir / "pairs.json"),
  };
  const std::string texts[] = {"abc ab aaaa", "<|im_start|>e\u0301! a <mask> b<|x|>y\u00e9?",
                               "\u4e2d\u6587\r\n  ab"};
  for (const BpeTokenizer& tokenizer : loaded) {
    EXPECT_EQ(tokenizer.merge_count(), 5u) << tokenizer.source();
    for (const std::string& text : texts) {
      EXPECT_EQ(tokenizer.encode(text), reference.encode(text))
          << tokenizer.source() << ": " << text;
    }
  }
  EXPECT_THAT(loaded[1].source(), HasSubstr("merges.txt"));
  EXPECT_THAT(loaded[1].source(), HasSubstr("tokenizer_config.json"));
}

}  // namespace
}  // namespace ethereal
