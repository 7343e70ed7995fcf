#include "memory/config.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "runtime/error.h"

namespace ethereal::memory {

namespace {

constexpr std::string_view kSection = "memory_management";

// Largest "_mb" value whose byte count fits in 64 bits.
constexpr std::uint64_t kMaxMebibytes = std::numeric_limits<std::uint64_t>::max() >> 20;

constexpr std::array<std::string_view, 4> kModeNames = {"adaptive", "performance", "memory",
                                                        "quality"};

std::string join(const auto& names) {
  std::string list;
  for (const auto& name : names) {
    if (!list.empty()) {
      list += ", ";
    }
    list += name;
  }
  return list;
}

std::optional<std::filesystem::path> home_directory() {
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return std::filesystem::path(home);
  }
  std::vector<char> buffer(16384);
  passwd entry{};
  passwd* result = nullptr;
  if (::getpwuid_r(::getuid(), &entry, buffer.data(), buffer.size(), &result) == 0 &&
      result != nullptr && result->pw_dir != nullptr && *result->pw_dir != '\0') {
    return std::filesystem::path(result->pw_dir);
  }
  return std::nullopt;
}

// Reads the memory_management section of one document, naming `source` and the key path of
// every problem.
class ConfigReader {
 public:
  explicit ConfigReader(std::string source) : source_(std::move(source)) {}

  MemoryConfig read_document(const YAML::Node& document) const;

 private:
  using KeyHandler = std::function<void(const YAML::Node& value, const std::string& path)>;

  void read_section(const YAML::Node& section, MemoryConfig& config) const;
  void for_each_key(const YAML::Node& map, const std::string& path,
                    const std::map<std::string, KeyHandler, std::less<>>& handlers) const;

  bool read_bool(const YAML::Node& node, const std::string& path) const;
  std::uint64_t read_unsigned(const YAML::Node& node, const std::string& path,
                              std::uint64_t max) const;
  int read_int(const YAML::Node& node, const std::string& path, int min, int max) const;
  std::string read_string(const YAML::Node& node, const std::string& path) const;
  std::vector<std::string> read_strategy_list(const YAML::Node& node,
                                              const std::string& path) const;
  std::filesystem::path read_path(const YAML::Node& node, const std::string& path) const;

  InvalidInputError error(const YAML::Node& node, const std::string& path,
                          const std::string& problem) const;

  std::string source_;
};

// A short description of a node for messages: its text, or its kind.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar:
      // yaml-cpp tags quoted scalars "!" and plain scalars "?".
      return node.Tag() == "!" ? fmt::format("the quoted string \"{}\"", node.Scalar())
                               : fmt::format("'{}'", node.Scalar());
    case YAML::NodeType::Undefined: break;
  }
  return "nothing";
}

bool is_plain_scalar(const YAML::Node& node) {
  return node.IsScalar() && node.Tag() != "!";
}

InvalidInputError ConfigReader::error(const YAML::Node& node, const std::string& path,
                                      const std::string& problem) const {
  const YAML::Mark mark = node.Mark();
  const std::string location =
      mark.line >= 0 ? fmt::format("{}:{}", source_, mark.line + 1) : source_;
  return InvalidInputError(fmt::format("{}: {}: {}", location, path, problem));
}

void ConfigReader::for_each_key(
    const YAML::Node& map, const std::string& path,
    const std::map<std::string, KeyHandler, std::less<>>& handlers) const {
  std::vector<std::string> known;
  for (const auto& [name, handler] : handlers) {
    known.push_back(name);
  }
  std::set<std::string> seen;
  for (const auto& entry : map) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) {
      throw error(key, path, fmt::format("a key must be a plain name, got {}", describe(key)));
    }
    const std::string name = key.Scalar();
    const std::string key_path = path.empty() ? name : path + "." + name;
    const auto handler = handlers.find(name);
    if (handler == handlers.end()) {
      const std::string scope = path.empty() ? std::string("top-level keys") : "keys of " + path;
      throw error(key, key_path, fmt::format("unknown key; valid {}: {}", scope, join(known)));
    }
    if (!seen.insert(name).second) {
      throw error(key, key_path, "the key appears twice; keep one");
    }
    handler->second(entry.second, key_path);
  }
}

bool ConfigReader::read_bool(const YAML::Node& node, const std::string& path) const {
  bool value = false;
  if (!is_plain_scalar(node) || !YAML::convert<bool>::decode(node, value)) {
    throw error(node, path, fmt::format("expected true or false, got {}", describe(node)));
  }
  return value;
}

std::uint64_t ConfigReader::read_unsigned(const YAML::Node& node, const std::string& path,
                                          std::uint64_t max) const {
  const std::string text = node.IsScalar() ? node.Scalar() : std::string();
  const bool digits = !text.empty() && std::all_of(text.begin(), text.end(),
                                                   [](char c) { return c >= '0' && c <= '9'; });
  if (!is_plain_scalar(node) || !digits) {
    const bool negative =
        is_plain_scalar(node) && text.size() > 1 && text.front() == '-' &&
        std::all_of(text.begin() + 1, text.end(), [](char c) { return c >= '0' && c <= '9'; });
    throw error(node, path,
                negative ? fmt::format("must not be negative, got {}", text)
                         : fmt::format("expected a whole number, got {}", describe(node)));
  }
  std::uint64_t value = 0;
  for (const char c : text) {
    const std::uint64_t digit = static_cast<std::uint64_t>(c - '0');
    if (value > (max - digit) / 10) {
      throw error(node, path, fmt::format("{} is too large; the maximum is {}", text, max));
    }
    value = value * 10 + digit;
  }
  return value;
}

int ConfigReader::read_int(const YAML::Node& node, const std::string& path, int min,
                           int max) const {
  const std::uint64_t value = read_unsigned(node, path, static_cast<std::uint64_t>(max));
  if (value < static_cast<std::uint64_t>(min)) {
    throw error(node, path, fmt::format("must be at least {}, got {}", min, value));
  }
  return static_cast<int>(value);
}

std::string ConfigReader::read_string(const YAML::Node& node, const std::string& path) const {
  if (!node.IsScalar()) {
    throw error(node, path, fmt::format("expected a string, got {}", describe(node)));
  }
  return node.Scalar();
}

std::vector<std::string> ConfigReader::read_strategy_list(const YAML::Node& node,
                                                          const std::string& path) const {
  if (!node.IsSequence()) {
    throw error(node, path,
                fmt::format("expected a list of strategy names, got {}", describe(node)));
  }
  if (node.size() == 0) {
    throw error(node, path,
                fmt::format("the list is empty; name at least one of: {}", strategy_name_list()));
  }
  std::vector<std::string> names;
  for (std::size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    const std::string item_path = fmt::format("{}[{}]", path, i);
    const std::string name = read_string(item, item_path);
    if (!is_strategy_name(name)) {
      throw error(
          item, item_path,
          fmt::format("unknown strategy '{}'; valid strategies: {}", name, strategy_name_list()));
    }
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      throw error(item, item_path, fmt::format("strategy '{}' is listed twice", name));
    }
    names.push_back(name);
  }
  return names;
}

std::filesystem::path ConfigReader::read_path(const YAML::Node& node,
                                              const std::string& path) const {
  const std::string text = read_string(node, path);
  if (text.empty()) {
    throw error(node, path, "the path is empty");
  }
  try {
    return expand_home(text);
  } catch (const InvalidInputError& e) {
    throw error(node, path, e.what());
  }
}

void ConfigReader::read_section(const YAML::Node& section, MemoryConfig& config) const {
  const std::string path(kSection);
  auto mebibytes = [this](std::uint64_t& field) {
    return [this, &field](const YAML::Node& value, const std::string& key) {
      field = read_unsigned(value, key, kMaxMebibytes);
    };
  };
  auto boolean = [this](bool& field) {
    return [this, &field](const YAML::Node& value, const std::string& key) {
      field = read_bool(value, key);
    };
  };
  auto file_path = [this](std::filesystem::path& field) {
    return [this, &field](const YAML::Node& value, const std::string& key) {
      field = read_path(value, key);
    };
  };
  const std::map<std::string, KeyHandler, std::less<>> handlers = {
      {"preferred_strategies",
       [&](const YAML::Node& value, const std::string& key) {
         config.preferred_strategies = read_strategy_list(value, key);
       }},
      {"fallback_enabled", boolean(config.fallback_enabled)},
      {"oom_retry_attempts",
       [&](const YAML::Node& value, const std::string& key) {
         config.oom_retry_attempts = read_int(value, key, 0, 1000);
       }},
      {"memory_threshold_mb", mebibytes(config.memory_threshold_mb)},
      {"warning_threshold_mb", mebibytes(config.warning_threshold_mb)},
      {"critical_threshold_mb", mebibytes(config.critical_threshold_mb)},
      {"fallback_trigger_threshold_mb", mebibytes(config.fallback_trigger_threshold_mb)},
      {"allow_resolution_reduction", boolean(config.allow_resolution_reduction)},
      {"mode",
       [&](const YAML::Node& value, const std::string& key) {
         const std::string text = read_string(value, key);
         try {
           config.mode = parse_mode(text);
         } catch (const InvalidInputError& e) {
           throw error(value, key, e.what());
         }
       }},
      {"profiling_enabled", boolean(config.profiling_enabled)},
      {"log_dir", file_path(config.log_dir)},
      {"history_db", file_path(config.history_db)},
      {"kept_blocks",
       [&](const YAML::Node& value, const std::string& key) {
         config.kept_blocks = read_int(value, key, 1, 1 << 16);
       }},
      {"sampling_interval_ms",
       [&](const YAML::Node& value, const std::string& key) {
         config.sampling_interval_ms = read_int(value, key, 1, 3'600'000);
       }},
  };
  for_each_key(section, path, handlers);

  if (config.warning_threshold_mb > config.critical_threshold_mb) {
    throw error(section, path + ".warning_threshold_mb",
                fmt::format("{} exceeds critical_threshold_mb ({}); the warning level must not "
                            "be above the critical level",
                            config.warning_threshold_mb, config.critical_threshold_mb));
  }
}

MemoryConfig ConfigReader::read_document(const YAML::Node& document) const {
  MemoryConfig config;
  if (document.IsNull()) {
    return config;
  }
  if (!document.IsMap()) {
    throw error(
        document, "(top level)",
        fmt::format("expected a mapping with a {} section, got {}", kSection, describe(document)));
  }
  const std::map<std::string, KeyHandler, std::less<>> handlers = {
      {std::string(kSection),
       [&](const YAML::Node& value, const std::string& key) {
         if (value.IsNull()) {
           return;
         }
         if (!value.IsMap()) {
           throw error(value, key, fmt::format("expected a mapping, got {}", describe(value)));
         }
         read_section(value, config);
       }},
  };
  for_each_key(document, "", handlers);
  return config;
}

}  // namespace

bool is_strategy_name(std::string_view name) {
  return std::find(kStrategyNames.begin(), kStrategyNames.end(), name) != kStrategyNames.end();
}

void check_strategy_name(std::string_view name, std::string_view context) {
  if (!is_strategy_name(name)) {
    throw InvalidInputError(fmt::format("{}: unknown strategy '{}'; valid strategies: {}", context,
                                        name, strategy_name_list()));
  }
}

std::string strategy_name_list() {
  return join(kStrategyNames);
}

std::string_view mode_name(Mode mode) {
  return kModeNames[static_cast<std::size_t>(mode)];
}

Mode parse_mode(std::string_view text) {
  for (std::size_t i = 0; i < kModeNames.size(); ++i) {
    if (kModeNames[i] == text) {
      return static_cast<Mode>(i);
    }
  }
  throw InvalidInputError(
      fmt::format("unknown mode '{}'; valid modes: {}", text, join(kModeNames)));
}

std::filesystem::path expand_home(std::string_view path) {
  if (path.empty() || path.front() != '~') {
    return std::filesystem::path(path);
  }
  if (path.size() > 1 && path[1] != '/') {
    throw InvalidInputError(
        fmt::format("path '{}': the ~user form is not supported; write ~/... for your own home "
                    "directory or give the full path",
                    path));
  }
  const std::optional<std::filesystem::path> home = home_directory();
  if (!home) {
    throw InvalidInputError(fmt::format(
        "path '{}': no home directory is known (HOME is unset and the user has no password "
        "database entry); set HOME or give the full path",
        path));
  }
  if (path.size() <= 2) {
    return *home;
  }
  return *home / std::filesystem::path(path.substr(2));
}

MemoryConfig parse_memory_config(std::string_view yaml_text, const std::string& source) {
  YAML::Node document;
  try {
    document = YAML::Load(std::string(yaml_text));
  } catch (const YAML::ParserException& e) {
    throw InvalidInputError(fmt::format("{}:{}: invalid YAML: {}", source, e.mark.line + 1, e.msg));
  }
  return ConfigReader(source).read_document(document);
}

MemoryConfig load_memory_config(const std::filesystem::path& file) {
  std::error_code ignored;
  if (std::filesystem::is_directory(file, ignored)) {
    throw InvalidInputError(fmt::format(
        "configuration file {} is a directory; give the path of a YAML file", file.string()));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw InvalidInputError(fmt::format(
        "configuration file {} cannot be read: it does not exist or is not readable; check the "
        "path given with --config",
        file.string()));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw IoError(fmt::format("reading configuration file {} failed", file.string()));
  }
  return parse_memory_config(text.str(), file.string());
}

}  // namespace ethereal::memory
