#include "models/qwen2_5_vl/json_fields.h"

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal::qwen2_5_vl {

JsonFields::JsonFields(const nlohmann::json& object, std::string source, std::string prefix)
    : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

bool JsonFields::has(const std::string& key) const {
  return object_.is_object() && object_.contains(key) && !object_[key].is_null();
}

void JsonFields::fail(const std::string& key, const std::string& problem) const {
  throw InvalidInputError(fmt::format("{}: key \"{}{}\" {}", source_, prefix_, key, problem));
}

const nlohmann::json& JsonFields::at(const std::string& key) const {
  if (!has(key)) {
    fail(key,
         "is missing; every Qwen2.5-VL config.json sets it, so check that this file "
         "belongs to the text encoder");
  }
  return object_[key];
}

std::int64_t JsonFields::integer(const std::string& key) const {
  const nlohmann::json& value = at(key);
  if (!value.is_number_integer()) {
    fail(key, fmt::format("must be an integer, got {} ({})", value.dump(), value.type_name()));
  }
  return value.get<std::int64_t>();
}

std::int64_t JsonFields::integer(const std::string& key, std::int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}

double JsonFields::number(const std::string& key, double fallback) const {
  if (!has(key)) {
    return fallback;
  }
  const nlohmann::json& value = object_[key];
  if (!value.is_number()) {
    fail(key, fmt::format("must be a number, got {} ({})", value.dump(), value.type_name()));
  }
  return value.get<double>();
}

bool JsonFields::boolean(const std::string& key, bool fallback) const {
  if (!has(key)) {
    return fallback;
  }
  const nlohmann::json& value = object_[key];
  if (!value.is_boolean()) {
    fail(key, fmt::format("must be true or false, got {} ({})", value.dump(), value.type_name()));
  }
  return value.get<bool>();
}

std::string JsonFields::string(const std::string& key, const std::string& fallback) const {
  if (!has(key)) {
    return fallback;
  }
  const nlohmann::json& value = object_[key];
  if (!value.is_string()) {
    fail(key, fmt::format("must be a string, got {} ({})", value.dump(), value.type_name()));
  }
  return value.get<std::string>();
}

std::vector<std::int64_t> JsonFields::integer_list(
    const std::string& key, const std::vector<std::int64_t>& fallback) const {
  if (!has(key)) {
    return fallback;
  }
  const nlohmann::json& value = object_[key];
  std::vector<std::int64_t> result;
  if (value.is_array()) {
    for (const nlohmann::json& item : value) {
      if (!item.is_number_integer()) {
        result.clear();
        break;
      }
      result.push_back(item.get<std::int64_t>());
    }
  }
  if (!value.is_array() || result.size() != value.size()) {
    fail(key, fmt::format("must be a list of integers, got {}", value.dump()));
  }
  return result;
}

std::vector<double> JsonFields::number_list(const std::string& key,
                                            const std::vector<double>& fallback) const {
  if (!has(key)) {
    return fallback;
  }
  const nlohmann::json& value = object_[key];
  std::vector<double> result;
  if (value.is_array()) {
    for (const nlohmann::json& item : value) {
      if (!item.is_number()) {
        result.clear();
        break;
      }
      result.push_back(item.get<double>());
    }
  }
  if (!value.is_array() || result.size() != value.size()) {
    fail(key, fmt::format("must be a list of numbers, got {}", value.dump()));
  }
  return result;
}

void require_json_object(const nlohmann::json& document, const std::string& source,
                         const std::string& what) {
  if (!document.is_object()) {
    throw InvalidInputError(
        fmt::format("{}: expected a JSON object ({}), got {}", source, what, document.type_name()));
  }
}

}  // namespace ethereal::qwen2_5_vl
