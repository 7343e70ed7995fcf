#include "models/tokenizer/tiny_vocabulary.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "models/tokenizer/bpe_tokenizer.h"
#include "models/tokenizer/tokenizer_files.h"
#include "runtime/error.h"
#include "tokenizer_test_support.h"

namespace ethereal {
namespace {

using ::testing::HasSubstr;

const char kSample[] =
    "Make the sky blue. Make the cat sit on the mat. The cat and the dog play in the garden.\n"
    "Turn the car red, then make the sky orange at sunset. \u628a\u5929\u7a7a\u53d8\u6210"
    "\u84dd\u8272\u3002 The the the.";

TEST(TinyVocabulary, HasQwenLayout) {
  const BpeVocabulary vocabulary = build_tiny_bpe_vocabulary(kSample, 40);
  EXPECT_EQ(vocabulary.merges.size(), 40u);
  EXPECT_LE(vocabulary.tokens.size(), 256u + 40u);
  ASSERT_EQ(vocabulary.added_tokens.size(), 22u);

  const BpeTokenizer tokenizer{vocabulary};
  const auto regular = static_cast<std::int32_t>(tokenizer.regular_token_count());
  EXPECT_EQ(tokenizer.token_id("<|endoftext|>"), regular);
  EXPECT_EQ(tokenizer.token_id("<|im_start|>"), regular + 1);
  EXPECT_EQ(tokenizer.token_id("<|vision_start|>"), regular + 9);
  EXPECT_EQ(tokenizer.token_id("<|image_pad|>"), regular + 12);
  EXPECT_EQ(tokenizer.token_id("<|file_sep|>"), regular + 21);
  EXPECT_EQ(tokenizer.vocabulary_size(), regular + 22);
  // Byte symbols keep the Qwen2 ids: "a" is 64 and "\n" is 198.
  EXPECT_EQ(tokenizer.token_id("a"), 64);
  EXPECT_EQ(tokenizer.token_id("\u010a"), 198);
}

TEST(TinyVocabulary, LearnsFrequentWords) {
  const BpeTokenizer tokenizer{build_tiny_bpe_vocabulary(kSample, 40)};
  // " the" occurs often enough to become a single token.
  EXPECT_EQ(tokenizer.encode(" the").size(), 1u);
  EXPECT_LT(tokenizer.encode(kSample).size(), std::string(kSample).size() / 2);
}

TEST(TinyVocabulary, IsDeterministic) {
  const BpeVocabulary first = build_tiny_bpe_vocabulary(kSample, 60);
  const BpeVocabulary second = build_tiny_bpe_vocabulary(kSample, 60);
  ASSERT_EQ(first.merges.size(), second.merges.size());
  for (std::size_t i = 0; i < first.merges.size(); ++i) {
    EXPECT_EQ(first.merges[i].left, second.merges[i].left) << "merge " << i;
    EXPECT_EQ(first.merges[i].right, second.merges[i].right) << "merge " << i;
  }
  EXPECT_EQ(first.tokens, second.tokens);
}

TEST(TinyVocabulary, StopsWhenSampleIsExhausted) {
  // "abab" has the pieces "abab" only: a b -> ab, then ab ab -> abab, then nothing is left.
  const BpeVocabulary vocabulary = build_tiny_bpe_vocabulary("abab", 10);
  ASSERT_EQ(vocabulary.merges.size(), 2u);
  EXPECT_EQ(vocabulary.merges[0].left, "a");
  EXPECT_EQ(vocabulary.merges[0].right, "b");
  EXPECT_EQ(vocabulary.merges[1].left, "ab");
  EXPECT_EQ(vocabulary.merges[1].right, "ab");
  EXPECT_EQ(vocabulary.tokens.size(), 258u);
}

TEST(TinyVocabulary, RejectsInvalidSample) {
  try {
    build_tiny_bpe_vocabulary("ok\xFF", 4);
    FAIL() << "an ill-formed sample was accepted";
  } catch (const InvalidInputError& e) {
    EXPECT_THAT(e.what(), HasSubstr("byte offset 2"));
  }
}

TEST(TinyVocabulary, WrittenFileLoadsAndRoundTrips) {
  testing::TemporaryDirectory dir;
  const BpeVocabulary vocabulary = build_tiny_bpe_vocabulary(kSample, 80);
  write_tokenizer_json(vocabulary, dir / "tokenizer.json");

  const BpeTokenizer in_memory{vocabulary};
  const BpeTokenizer loaded = BpeTokenizer::from_directory(dir.path());
  EXPECT_EQ(loaded.regular_token_count(), in_memory.regular_token_count());
  EXPECT_EQ(loaded.merge_count(), 80u);

  const std::string texts[] = {
      kSample,
      "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Make it "
      "blue<|im_end|>\n<|im_start|>assistant\n",
      "Unseen words, digits 2024 and \U0001f3a8 emoji.", "cafe\u0301"};
  for (const std::string& text : texts) {
    const std::vector<std::int32_t> ids = loaded.encode(text);
    EXPECT_EQ(ids, in_memory.encode(text)) << text;
    EXPECT_EQ(loaded.decode(ids), text == "cafe\u0301" ? "caf\u00e9" : text);
  }
  EXPECT_EQ(loaded.encode("<|image_pad|>"),
            std::vector<std::int32_t>{loaded.token_id("<|image_pad|>")});
}

}  // namespace
}  // namespace ethereal
