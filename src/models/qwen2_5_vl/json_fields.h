// Typed reads of configuration keys from a JSON object, shared by the Qwen2.5-VL model and
// processor configurations.
//
// A key that is absent or null is "missing": the fallback overloads return the fallback, the
// required ones throw. Every error is an InvalidInputError naming the file and the key with
// its full path (for example "vision_config.depth"), and what was expected and found.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ethereal::qwen2_5_vl {

class JsonFields {
 public:
  // `object` must outlive this reader. `prefix` is prepended to key names in messages
  // ("vision_config." for the nested vision object, "" at the top level).
  JsonFields(const nlohmann::json& object, std::string source, std::string prefix = "");

  bool has(const std::string& key) const;
  // Returns the value of a present key and throws like a required read when it is missing.
  const nlohmann::json& at(const std::string& key) const;

  std::int64_t integer(const std::string& key) const;
  std::int64_t integer(const std::string& key, std::int64_t fallback) const;
  double number(const std::string& key, double fallback) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  std::vector<std::int64_t> integer_list(const std::string& key,
                                         const std::vector<std::int64_t>& fallback) const;
  std::vector<double> number_list(const std::string& key,
                                  const std::vector<double>& fallback) const;

  // "<source>: key \"<prefix><key>\" <problem>" as an InvalidInputError.
  [[noreturn]] void fail(const std::string& key, const std::string& problem) const;

  const std::string& source() const { return source_; }

 private:
  const nlohmann::json& object_;
  std::string source_;
  std::string prefix_;
};

// Throws InvalidInputError unless `document` is a JSON object; `what` names the expected file.
void require_json_object(const nlohmann::json& document, const std::string& source,
                         const std::string& what);

}  // namespace ethereal::qwen2_5_vl
