#include "models/tokenizer/tokenizer_files.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "models/tokenizer/pretokenizer.h"
#include "runtime/error.h"

namespace ethereal {
namespace {

using nlohmann::json;

std::string read_text_file(const std::filesystem::path& path) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    throw InvalidInputError(
        fmt::format("{}: file not found or not a regular file; check the "
                    "path of the tokenizer files",
                    path.string()));
  }
  std::ifstream in(path, std::ios::binary);
  const std::uintmax_t size = std::filesystem::file_size(path, error);
  if (!in || error) {
    throw IoError(fmt::format("{}: opening the file failed: {}", path.string(),
                              error ? error.message() : std::strerror(errno)));
  }
  std::string content(static_cast<std::size_t>(size), '\0');
  in.read(content.data(), static_cast<std::streamsize>(content.size()));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) {
    throw IoError(fmt::format("{}: reading the file failed after {} of {} bytes", path.string(),
                              in.gcount(), size));
  }
  return content;
}

json parse_json_file(const std::filesystem::path& path, std::string_view expected) {
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // e.what() starts with "[json.exception.parse_error.101] "; the rest names line and column.
    std::string_view detail = e.what();
    if (const std::size_t end = detail.find("] "); end != std::string_view::npos) {
      detail.remove_prefix(end + 2);
    }
    throw InvalidInputError(fmt::format("{}: invalid JSON at byte {}: {}; expected {}",
                                        path.string(), e.byte, detail, expected));
  }
}

// Field access with errors that name the file and the field path ("model.vocab").
class JsonFile {
 public:
  explicit JsonFile(std::string path) : path_(std::move(path)) {}

  const std::string& path() const { return path_; }

  [[noreturn]] void fail(std::string_view field, std::string_view problem) const {
    throw InvalidInputError(fmt::format("{}: {} {}", path_, field, problem));
  }

  const json& object(const json& value, std::string_view field) const {
    if (!value.is_object())
      fail(field, fmt::format("must be a JSON object, found {}", type(value)));
    return value;
  }

  // The member `key` of the object `parent` (named `field`), or nullptr when absent or null.
  const json* optional(const json& parent, std::string_view field, std::string_view key) const {
    object(parent, field);
    const auto it = parent.find(key);
    if (it == parent.end() || it->is_null())
      return nullptr;
    return &*it;
  }

  const json& required(const json& parent, std::string_view field, std::string_view key) const {
    const json* value = optional(parent, field, key);
    if (value == nullptr)
      fail(join(field, key), "is missing");
    return *value;
  }

  std::string string(const json& value, std::string_view field) const {
    if (!value.is_string())
      fail(field, fmt::format("must be a string, found {}", type(value)));
    return value.get<std::string>();
  }

  bool boolean(const json& parent, std::string_view field, std::string_view key,
               bool fallback) const {
    const json* value = optional(parent, field, key);
    if (value == nullptr)
      return fallback;
    if (!value->is_boolean()) {
      fail(join(field, key), fmt::format("must be true or false, found {}", type(*value)));
    }
    return value->get<bool>();
  }

  std::int32_t id(const json& value, std::string_view field) const {
    if (!value.is_number_integer() || value.get<std::int64_t>() < 0 ||
        value.get<std::int64_t>() > std::numeric_limits<std::int32_t>::max()) {
      fail(field, fmt::format("must be a non-negative 32-bit integer id, found {}", value.dump()));
    }
    return value.get<std::int32_t>();
  }

  static std::string join(std::string_view field, std::string_view key) {
    return field.empty() ? std::string(key) : fmt::format("{}.{}", field, key);
  }

 private:
  static std::string type(const json& value) { return value.type_name(); }

  std::string path_;
};

// Returns the JSON text of `value`, cut to a length that fits in an error message.
std::string shorten(const json& value) {
  std::string text = value.dump();
  constexpr std::size_t kMax = 160;
  if (text.size() > kMax)
    text = text.substr(0, kMax) + "...";
  return text;
}

std::vector<std::pair<std::string, std::int32_t>> read_vocab_object(const JsonFile& file,
                                                                    const json& vocab,
                                                                    std::string_view field) {
  file.object(vocab, field);
  std::vector<std::pair<std::string, std::int32_t>> tokens;
  tokens.reserve(vocab.size());
  for (const auto& [text, id] : vocab.items()) {
    tokens.emplace_back(text, file.id(id, fmt::format("{}[\"{}\"]", field, text)));
  }
  return tokens;
}

// A "left right" merge; both parts non-empty and separated by exactly one space.
bool split_merge_line(std::string_view line, BpeMerge& merge) {
  const std::size_t space = line.find(' ');
  if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string_view::npos) {
    return false;
  }
  merge.left = line.substr(0, space);
  merge.right = line.substr(space + 1);
  return true;
}

std::vector<BpeMerge> read_merges_array(const JsonFile& file, const json& merges) {
  if (!merges.is_array()) {
    file.fail("model.merges", fmt::format("must be an array, found {}", merges.type_name()));
  }
  std::vector<BpeMerge> result(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const json& entry = merges[i];
    const bool is_pair = entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
                         entry[1].is_string() && !entry[0].get_ref<const std::string&>().empty() &&
                         !entry[1].get_ref<const std::string&>().empty();
    if (is_pair) {
      result[i] = {entry[0].get<std::string>(), entry[1].get<std::string>()};
    } else if (!entry.is_string() ||
               !split_merge_line(entry.get_ref<const std::string&>(), result[i])) {
      file.fail(fmt::format("model.merges[{}]", i),
                fmt::format("must be \"left right\" or [\"left\", \"right\"] with two non-empty "
                            "tokens, found {}",
                            shorten(entry)));
    }
  }
  return result;
}

AddedToken read_added_token(const JsonFile& file, const json& entry, std::string_view field,
                            std::int32_t id) {
  AddedToken token;
  token.id = id;
  token.content =
      file.string(file.required(entry, field, "content"), JsonFile::join(field, "content"));
  token.special = file.boolean(entry, field, "special", false);
  // HuggingFace's default: special tokens match the raw text, others the normalised text.
  token.normalized = file.boolean(entry, field, "normalized", !token.special);
  token.lstrip = file.boolean(entry, field, "lstrip", false);
  token.rstrip = file.boolean(entry, field, "rstrip", false);
  if (file.boolean(entry, field, "single_word", false)) {
    file.fail(JsonFile::join(field, "single_word"),
              "is true, which this tokenizer does not implement; only Qwen2-style added tokens "
              "(single_word false) are supported");
  }
  return token;
}

bool read_normalizer(const JsonFile& file, const json& root) {
  const json* normalizer = file.optional(root, "", "normalizer");
  if (normalizer == nullptr)
    return false;
  const std::string type =
      file.string(file.required(*normalizer, "normalizer", "type"), "normalizer.type");
  if (type == "NFC")
    return true;
  if (type == "Sequence") {
    const json& steps = file.required(*normalizer, "normalizer", "normalizers");
    if (steps.is_array() && steps.empty())
      return false;
    if (steps.is_array() && steps.size() == 1 && steps[0].is_object() &&
        steps[0].value("type", "") == "NFC") {
      return true;
    }
  }
  file.fail("normalizer", fmt::format("{} is not supported: this tokenizer implements NFC or no "
                                      "normalization",
                                      shorten(*normalizer)));
}

void check_pre_tokenizer(const JsonFile& file, const json& root) {
  const json& pre = file.object(file.required(root, "", "pre_tokenizer"), "pre_tokenizer");
  const auto is_qwen2_split = [](const json& step) {
    return step.is_object() && step.value("type", "") == "Split" && step.contains("pattern") &&
           step["pattern"].is_object() &&
           step["pattern"].value("Regex", "") == kQwen2PretokenizerPattern &&
           step.value("behavior", "") == "Isolated" && !step.value("invert", false);
  };
  const auto is_plain_byte_level = [](const json& step) {
    return step.is_object() && step.value("type", "") == "ByteLevel" &&
           !step.value("add_prefix_space", false) && !step.value("use_regex", true);
  };
  const json* steps = file.optional(pre, "pre_tokenizer", "pretokenizers");
  const bool supported = pre.value("type", "") == "Sequence" && steps != nullptr &&
                         steps->is_array() && steps->size() == 2 && is_qwen2_split((*steps)[0]) &&
                         is_plain_byte_level((*steps)[1]);
  if (!supported) {
    file.fail("pre_tokenizer",
              fmt::format("{} is not supported: this tokenizer implements the Qwen2 "
                          "pre-tokenizer, a Sequence of a Split on the Qwen2 pattern (behavior "
                          "Isolated) and a ByteLevel step with add_prefix_space and use_regex "
                          "false",
                          shorten(pre)));
  }
}

// The decoder and post-processor must be ByteLevel (or absent): any other decoder would decode
// differently, and other post-processors add tokens such as BOS.
void check_byte_level_step(const JsonFile& file, const json& root, std::string_view key) {
  const json* step = file.optional(root, "", key);
  if (step == nullptr)
    return;
  if (!step->is_object() || step->value("type", "") != "ByteLevel") {
    file.fail(key, fmt::format("{} is not supported: only ByteLevel (or null) is implemented",
                               shorten(*step)));
  }
}

// Rejects BPE options that change the encoding and that this tokenizer does not implement.
void check_model_options(const JsonFile& file, const json& model) {
  if (const json* type = file.optional(model, "model", "type")) {
    if (file.string(*type, "model.type") != "BPE") {
      file.fail("model.type", fmt::format("is {}, expected \"BPE\"", type->dump()));
    }
  }
  if (file.optional(model, "model", "dropout") != nullptr) {
    file.fail("model.dropout", "is set; BPE dropout is a training option, expected null");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* affix = file.optional(model, "model", key);
    if (affix != nullptr && !file.string(*affix, JsonFile::join("model", key)).empty()) {
      file.fail(JsonFile::join("model", key),
                fmt::format("is {}, which byte-level BPE does not use; expected \"\" or null",
                            affix->dump()));
    }
  }
  if (file.boolean(model, "model", "byte_fallback", false)) {
    file.fail("model.byte_fallback", "is true, which byte-level BPE does not use");
  }
}

}  // namespace

BpeVocabulary read_tokenizer_json(const std::filesystem::path& path) {
  const JsonFile file(path.string());
  const json root = parse_json_file(path, "a HuggingFace tokenizer.json");
  file.object(root, "the top level");

  const json& model = file.object(file.required(root, "", "model"), "model");
  check_model_options(file, model);

  BpeVocabulary vocabulary;
  vocabulary.tokens_source = file.path();
  vocabulary.merges_source = file.path();
  vocabulary.added_tokens_source = file.path();
  vocabulary.tokens =
      read_vocab_object(file, file.required(model, "model", "vocab"), "model.vocab");
  vocabulary.merges = read_merges_array(file, file.required(model, "model", "merges"));
  vocabulary.ignore_merges = file.boolean(model, "model", "ignore_merges", false);

  if (const json* added = file.optional(root, "", "added_tokens")) {
    if (!added->is_array()) {
      file.fail("added_tokens", fmt::format("must be an array, found {}", added->type_name()));
    }
    for (std::size_t i = 0; i < added->size(); ++i) {
      const std::string field = fmt::format("added_tokens[{}]", i);
      const json& entry = file.object((*added)[i], field);
      const std::int32_t id = file.id(file.required(entry, field, "id"), field + ".id");
      vocabulary.added_tokens.push_back(read_added_token(file, entry, field, id));
    }
  }

  vocabulary.nfc = read_normalizer(file, root);
  check_pre_tokenizer(file, root);
  check_byte_level_step(file, root, "decoder");
  check_byte_level_step(file, root, "post_processor");
  return vocabulary;
}

namespace {

std::vector<BpeMerge> read_merges_txt(const std::filesystem::path& path,
                                      std::vector<std::size_t>& lines) {
  const std::string text = read_text_file(path);
  std::vector<BpeMerge> merges;
  std::size_t line_number = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos)
      end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (line.ends_with('\r'))
      line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.starts_with("#version")))
      continue;

    BpeMerge merge;
    if (!split_merge_line(line, merge)) {
      throw InvalidInputError(
          fmt::format("{} line {}: expected two tokens separated by one space, found \"{}\"",
                      path.string(), line_number, line.substr(0, 160)));
    }
    merges.push_back(std::move(merge));
    lines.push_back(line_number);
  }
  return merges;
}

// Added tokens by id from tokenizer_config.json "added_tokens_decoder".
std::map<std::int32_t, AddedToken> read_added_tokens_decoder(const std::filesystem::path& path) {
  std::map<std::int32_t, AddedToken> tokens;
  const JsonFile file(path.string());
  const json root = parse_json_file(path, "a HuggingFace tokenizer_config.json");
  const json* decoder =
      file.optional(file.object(root, "the top level"), "", "added_tokens_decoder");
  if (decoder == nullptr)
    return tokens;
  file.object(*decoder, "added_tokens_decoder");
  for (const auto& [key, entry] : decoder->items()) {
    const std::string field = fmt::format("added_tokens_decoder[\"{}\"]", key);
    std::int32_t id = -1;
    try {
      std::size_t used = 0;
      id = std::stoi(key, &used);
      if (used != key.size() || id < 0)
        id = -1;
    } catch (const std::exception&) {
      id = -1;
    }
    if (id < 0)
      file.fail(field, "has a key that is not a non-negative integer id");
    tokens.emplace(id, read_added_token(file, file.object(entry, field), field, id));
  }
  return tokens;
}

}  // namespace

BpeVocabulary read_vocab_and_merges(const std::filesystem::path& vocab_json,
                                    const std::filesystem::path& merges_txt,
                                    const std::filesystem::path& added_tokens_json,
                                    const std::filesystem::path& tokenizer_config_json) {
  BpeVocabulary vocabulary;
  vocabulary.tokens_source = vocab_json.string();
  vocabulary.merges_source = merges_txt.string();
  const JsonFile vocab_file(vocab_json.string());
  vocabulary.tokens = read_vocab_object(
      vocab_file, parse_json_file(vocab_json, "a vocab.json object {token: id}"), "");
  vocabulary.merges = read_merges_txt(merges_txt, vocabulary.merge_lines);

  std::map<std::int32_t, AddedToken> added;
  std::vector<std::string> sources;
  if (!tokenizer_config_json.empty()) {
    added = read_added_tokens_decoder(tokenizer_config_json);
    sources.push_back(tokenizer_config_json.string());
  }
  if (!added_tokens_json.empty()) {
    const JsonFile file(added_tokens_json.string());
    sources.push_back(file.path());
    // Tokens listed only here carry no flags; they are matched in the raw text.
    const auto listed = read_vocab_object(
        file, parse_json_file(added_tokens_json, "an added_tokens.json object {content: id}"), "");
    for (const auto& [content, id] : listed) {
      const auto it = added.find(id);
      if (it == added.end()) {
        added.emplace(id, AddedToken{id, content, false, false, false, false});
      } else if (it->second.content != content) {
        throw InvalidInputError(fmt::format(
            "{} gives id {} to \"{}\", but {} gives it to \"{}\"; the tokenizer files must come "
            "from the same model",
            file.path(), id, content, tokenizer_config_json.string(), it->second.content));
      }
    }
  }
  for (auto& [id, token] : added)
    vocabulary.added_tokens.push_back(std::move(token));
  for (const std::string& source : sources) {
    if (!vocabulary.added_tokens_source.empty())
      vocabulary.added_tokens_source += ", ";
    vocabulary.added_tokens_source += source;
  }
  vocabulary.nfc = true;
  return vocabulary;
}

void write_tokenizer_json(const BpeVocabulary& vocabulary, const std::filesystem::path& path) {
  using ordered = nlohmann::ordered_json;
  ordered added = ordered::array();
  for (const AddedToken& token : vocabulary.added_tokens) {
    added.push_back({{"id", token.id},
                     {"content", token.content},
                     {"single_word", false},
                     {"lstrip", token.lstrip},
                     {"rstrip", token.rstrip},
                     {"normalized", token.normalized},
                     {"special", token.special}});
  }
  const ordered byte_level = {{"type", "ByteLevel"},
                              {"add_prefix_space", false},
                              {"trim_offsets", false},
                              {"use_regex", false}};
  ordered vocab = ordered::object();
  for (const auto& [text, id] : vocabulary.tokens)
    vocab[text] = id;
  ordered merges = ordered::array();
  for (const BpeMerge& merge : vocabulary.merges) {
    merges.push_back(ordered::array({merge.left, merge.right}));
  }

  ordered root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = std::move(added);
  root["normalizer"] = vocabulary.nfc ? ordered{{"type", "NFC"}} : ordered(nullptr);
  ordered split = {{"type", "Split"},
                   {"pattern", {{"Regex", std::string(kQwen2PretokenizerPattern)}}},
                   {"behavior", "Isolated"},
                   {"invert", false}};
  ordered steps = ordered::array();
  steps.push_back(std::move(split));
  steps.push_back(byte_level);
  root["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", std::move(steps)}};
  root["post_processor"] = byte_level;
  root["decoder"] = byte_level;
  root["model"] = {{"type", "BPE"},
                   {"dropout", nullptr},
                   {"unk_token", nullptr},
                   {"continuing_subword_prefix", ""},
                   {"end_of_word_suffix", ""},
                   {"fuse_unk", false},
                   {"byte_fallback", false},
                   {"ignore_merges", vocabulary.ignore_merges},
                   {"vocab", std::move(vocab)},
                   {"merges", std::move(merges)}};

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << root.dump(2) << '\n';
  out.close();
  if (!out) {
    throw IoError(fmt::format("{}: writing the tokenizer file failed: {}", path.string(),
                              std::strerror(errno)));
  }
}

}  // namespace ethereal
