// Expected pieces below were derived by hand from the Qwen2 pattern, alternative by
// alternative, with a backtracking engine's rules (first matching alternative wins).
#include "models/tokenizer/pretokenizer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ethereal {
namespace {

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> pieces;
  for (std::string_view piece : split_qwen2_pretokens(text))
    pieces.emplace_back(piece);
  return pieces;
}

struct SplitCase {
  const char* name;
  std::string text;
  std::vector<std::string> pieces;
};

// Prints only the name, so test listings stay readable.
void PrintTo(const SplitCase& c, std::ostream* os) {
  *os << c.name;
}

class Qwen2SplitTest : public ::testing::TestWithParam<SplitCase> {};

TEST_P(Qwen2SplitTest, MatchesHandDerivedPieces) {
  const SplitCase& c = GetParam();
  EXPECT_EQ(split(c.text), c.pieces);
}

const SplitCase kCases[] = {
    {"Empty", "", {}},
    {"WordsKeepLeadingSpace", "Hello world", {"Hello", " world"}},
    {"ContractionLower", "it's", {"it", "'s"}},
    {"ContractionUpper", "DON'T", {"DON", "'T"}},
    {"ContractionTwoLetters", "we'll THEY'RE you've", {"we", "'ll", " THEY", "'RE", " you", "'ve"}},
    {"ContractionMixedCase", "I'M i'M we'Ll", {"I", "'M", " i", "'M", " we", "'Ll"}},
    {"ContractionBeforeLetters", "'sup", {"'s", "up"}},
    // Only the letters listed are contractions; "'x" is a letter run with a prefix.
    {"ApostropheWordPrefix", "'xyz", {"'xyz"}},
    // U+017F LATIN SMALL LETTER LONG S case-folds to "s", so the case-insensitive
    // alternative takes "'ſ" alone and "x" starts a new piece.
    {"ContractionCaseFoldsLongS", "'\u017fx", {"'\u017f", "x"}},
    {"DigitsOneByOne", "12345", {"1", "2", "3", "4", "5"}},
    {"LetterThenDigit", "x1", {"x", "1"}},
    {"SpaceBeforeDigit", "a 1", {"a", " ", "1"}},
    {"FullwidthAndOtherNumbers", "\uff11\u00bd\u2162", {"\uff11", "\u00bd", "\u2162"}},
    {"TwoSpacesBeforeWord", "a  b", {"a", " ", " b"}},
    {"TrailingSpacesKeptWhole", "a   ", {"a", "   "}},
    {"TabPrefixesWord", "\tword", {"\tword"}},
    {"NewlinesGrouped", "a\n\nb", {"a", "\n\n", "b"}},
    {"SpaceNewlineSpace", "a \n b", {"a", " \n", " b"}},
    {"CrLf", "x\r\n", {"x", "\r\n"}},
    {"SpacesAroundNewlineBeforeWord", "x \n  y", {"x", " \n", " ", " y"}},
    {"SpacesThenNewlineAtEnd", "x  \n", {"x", "  \n"}},
    {"PunctuationTakesNewlines", "hello!!!\n\nworld", {"hello", "!!!\n\n", "world"}},
    {"PunctuationTakesCrLf", "...\r\nx", {"...\r\n", "x"}},
    {"SpaceBeforePunctuation", " !?", {" !?"}},
    {"TwoSpacesBeforePunctuation", "  !?", {" ", " !?"}},
    {"PunctuationPrefixesWord", "(word)", {"(word", ")"}},
    {"ChineseRun", "\u4f60\u597d\u4e16\u754c", {"\u4f60\u597d\u4e16\u754c"}},
    // The full-width comma is not a letter, so it prefixes the following letter run.
    {"ChineseComma", "\u4e2d\u6587\uff0c\u6d4b\u8bd5", {"\u4e2d\u6587", "\uff0c\u6d4b\u8bd5"}},
    {"IdeographicSpacePrefixesWord", "a\u3000b", {"a", "\u3000b"}},
    // U+0085 NEXT LINE is White_Space, so it ends the punctuation run.
    {"NextLineIsWhitespace", "!\u0085", {"!", "\u0085"}},
    // U+FEFF is a format character, not White_Space, so it joins the punctuation run.
    {"ByteOrderMarkIsNotWhitespace", "!\ufeff", {"!\ufeff"}},
    // U+0301 COMBINING ACUTE ACCENT is a mark (Mn), neither a letter nor a number.
    {"CombiningMarkSplitsFromLetter", "e\u0301", {"e", "\u0301"}},
    {"EmojiWithSkinTone", "\U0001f44d\U0001f3fd", {"\U0001f44d\U0001f3fd"}},
    {"SpaceBeforeEmoji", "ok \U0001f600", {"ok", " \U0001f600"}},
    {"ZwjSequence",
     "\U0001f468\u200d\U0001f469\u200d\U0001f467",
     {"\U0001f468\u200d\U0001f469\u200d\U0001f467"}},
    // The line-break alternative ends at the last line break; the space after it is a
    // piece of its own.
    {"NewlineThenSpaceAtEnd", "a\n ", {"a", "\n", " "}},
};

INSTANTIATE_TEST_SUITE_P(Cases, Qwen2SplitTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<SplitCase>& info) {
                           return std::string(info.param.name);
                         });

TEST(Qwen2Split, PiecesCoverTextWithoutGaps) {
  const std::string text = "Mixed \u6587\u5b57 123 it's  \r\n\t!? \U0001f600\u3000end  ";
  std::string joined;
  for (std::string_view piece : split_qwen2_pretokens(text)) {
    EXPECT_FALSE(piece.empty());
    joined += piece;
  }
  EXPECT_EQ(joined, text);
}

}  // namespace
}  // namespace ethereal
