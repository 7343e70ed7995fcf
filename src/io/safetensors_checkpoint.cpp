#include "io/safetensors_checkpoint.h"

#include <algorithm>
#include <set>
#include <span>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "io/file_mapping.h"
#include "io/safetensors_format.h"
#include "runtime/error.h"

namespace ethereal {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr std::string_view kIndexSuffix = ".safetensors.index.json";
constexpr std::string_view kSafetensorsSuffix = ".safetensors";

bool ends_with(const fs::path& path, std::string_view suffix) {
  return path.filename().string().ends_with(suffix);
}

std::string join_file_names(const std::vector<fs::path>& paths) {
  std::string joined;
  for (const fs::path& path : paths) {
    joined += (joined.empty() ? "" : ", ") + path.filename().string();
  }
  return joined;
}

// Picks the index or the single safetensors file of a directory, by the rules in the header.
fs::path resolve_directory(const fs::path& directory) {
  std::vector<fs::path> indexes;
  std::vector<fs::path> files;
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(directory, error)) {
    if (!entry.is_regular_file(error)) {
      continue;
    }
    if (ends_with(entry.path(), kIndexSuffix)) {
      indexes.push_back(entry.path());
    } else if (ends_with(entry.path(), kSafetensorsSuffix)) {
      files.push_back(entry.path());
    }
  }
  if (error) {
    throw InvalidInputError(
        fmt::format("cannot list directory {}: {}", directory.string(), error.message()));
  }
  std::sort(indexes.begin(), indexes.end());
  std::sort(files.begin(), files.end());

  if (indexes.size() == 1) {
    return indexes.front();
  }
  if (indexes.size() > 1) {
    throw InvalidInputError(
        fmt::format("{}: directory contains {} index files ({}); pass the path of the one to load",
                    directory.string(), indexes.size(), join_file_names(indexes)));
  }
  if (files.size() == 1) {
    return files.front();
  }
  if (files.empty()) {
    throw InvalidInputError(fmt::format(
        "{}: directory contains no *.safetensors file and no *.safetensors.index.json; pass the "
        "path of a checkpoint file or its index",
        directory.string()));
  }
  throw InvalidInputError(fmt::format(
      "{}: directory contains {} safetensors files ({}) and no *.safetensors.index.json; pass "
      "the path of one file, or of an index that lists the shards",
      directory.string(), files.size(), join_file_names(files)));
}

// Parses an index file into its weight map (tensor name -> shard file name) and metadata.
struct IndexContents {
  std::map<std::string, std::string> weight_map;
  SafetensorsMetadata metadata;
};

IndexContents read_index(const fs::path& path) {
  const std::string source = path.string();
  const FileMapping mapping(path);
  if (mapping.size() > safetensors_format::kMaxHeaderBytes) {
    throw InvalidInputError(fmt::format("{}: index is {} bytes, more than the limit of {} bytes",
                                        source, mapping.size(),
                                        safetensors_format::kMaxHeaderBytes));
  }
  const std::string_view text(reinterpret_cast<const char*>(mapping.data()), mapping.size());
  const auto describe_duplicate = [&source](const std::vector<std::string>& keys) {
    if (keys.size() == 2 && keys[0] == "weight_map") {
      return fmt::format("{}: tensor \"{}\" appears twice in weight_map", source, keys[1]);
    }
    std::string dotted;
    for (const std::string& key : keys) {
      dotted += (dotted.empty() ? "" : ".") + key;
    }
    return fmt::format("{}: key \"{}\" appears twice", source, dotted);
  };
  const json root =
      safetensors_format::parse_json_rejecting_duplicates(text, source, 0, describe_duplicate);

  if (!root.is_object()) {
    throw InvalidInputError(fmt::format("{}: index must be a JSON object, found {}", source,
                                        safetensors_format::describe_json(root)));
  }
  const auto weight_map = root.find("weight_map");
  if (weight_map == root.end() || !weight_map->is_object() || weight_map->empty()) {
    throw InvalidInputError(fmt::format(
        "{}: index needs \"weight_map\", a non-empty object mapping tensor names to shard file "
        "names{}",
        source,
        weight_map == root.end() ? ""
                                 : ", found " + safetensors_format::describe_json(*weight_map)));
  }

  IndexContents contents;
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      throw InvalidInputError(
          fmt::format("{}: weight_map \"{}\" must be a shard file name, found {}", source, name,
                      safetensors_format::describe_json(shard)));
    }
    const std::string& shard_name = shard.get_ref<const std::string&>();
    const fs::path shard_path(shard_name);
    if (shard_name.empty() || shard_path.has_parent_path() || shard_name == "." ||
        shard_name == "..") {
      throw InvalidInputError(fmt::format(
          "{}: weight_map \"{}\" names shard \"{}\"; a shard must be a plain file name in the "
          "index's directory",
          source, name, shard_name));
    }
    contents.weight_map.emplace(name, shard_name);
  }

  if (const auto metadata = root.find("metadata"); metadata != root.end()) {
    if (!metadata->is_object()) {
      throw InvalidInputError(fmt::format("{}: \"metadata\" must be an object, found {}", source,
                                          safetensors_format::describe_json(*metadata)));
    }
    for (const auto& [key, value] : metadata->items()) {
      contents.metadata.emplace(key, value.is_string() ? value.get<std::string>() : value.dump());
    }
  }
  return contents;
}

// Checks that `shard` contains exactly the tensors the index assigns to it.
void check_shard_against_index(const fs::path& index_path, const std::string& shard_name,
                               const SafetensorsFile& shard, const std::vector<std::string>& listed,
                               const std::map<std::string, std::string>& weight_map) {
  for (const std::string& name : listed) {
    if (!shard.contains(name)) {
      throw InvalidInputError(fmt::format(
          "{}: weight_map puts tensor \"{}\" in shard \"{}\", but {} does not contain it",
          index_path.string(), name, shard_name, shard.path().string()));
    }
  }
  for (const std::string& name : shard.names()) {
    const auto listed_shard = weight_map.find(name);
    if (listed_shard == weight_map.end()) {
      throw InvalidInputError(fmt::format(
          "{}: shard \"{}\" contains tensor \"{}\", which weight_map does not list; regenerate "
          "the index",
          index_path.string(), shard_name, name));
    }
    if (listed_shard->second != shard_name) {
      throw InvalidInputError(fmt::format(
          "{}: tensor \"{}\" appears in shards \"{}\" and \"{}\" (weight_map lists \"{}\"); each "
          "tensor must be stored once",
          index_path.string(), name, shard_name, listed_shard->second, listed_shard->second));
    }
  }
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const fs::path& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (!fs::exists(status)) {
    throw InvalidInputError(
        fmt::format("{}: checkpoint not found; pass a safetensors file, an index or a directory",
                    path.string()));
  }
  const fs::path resolved = fs::is_directory(status) ? resolve_directory(path) : path;
  if (resolved.extension() == ".json") {
    return open_index(resolved);
  }
  return open_single(resolved);
}

SafetensorsCheckpoint SafetensorsCheckpoint::open_single(const fs::path& path) {
  SafetensorsCheckpoint checkpoint;
  checkpoint.path_ = path;
  checkpoint.files_.push_back(SafetensorsFile::open(path));
  checkpoint.metadata_ = checkpoint.files_.front().metadata();
  checkpoint.build_lookup();
  return checkpoint;
}

SafetensorsCheckpoint SafetensorsCheckpoint::open_index(const fs::path& path) {
  IndexContents index = read_index(path);

  // Shard file name -> tensors the index assigns to it. std::map sorts the shards by name.
  std::map<std::string, std::vector<std::string>> listed_by_shard;
  for (const auto& [name, shard] : index.weight_map) {
    listed_by_shard[shard].push_back(name);
  }

  SafetensorsCheckpoint checkpoint;
  checkpoint.path_ = path;
  checkpoint.metadata_ = std::move(index.metadata);
  for (const auto& [shard_name, listed] : listed_by_shard) {
    const fs::path shard_path = path.parent_path() / shard_name;
    std::error_code error;
    if (!fs::is_regular_file(shard_path, error)) {
      throw InvalidInputError(fmt::format(
          "{}: shard \"{}\" (listed for {} tensors, such as \"{}\") not found at {}; download "
          "the missing shard or fix the index",
          path.string(), shard_name, listed.size(), listed.front(), shard_path.string()));
    }
    SafetensorsFile shard = SafetensorsFile::open(shard_path);
    check_shard_against_index(path, shard_name, shard, listed, index.weight_map);
    checkpoint.files_.push_back(std::move(shard));
  }
  checkpoint.build_lookup();
  return checkpoint;
}

// Shards were checked against the index (or there is a single file), so every name is unique.
void SafetensorsCheckpoint::build_lookup() {
  for (std::size_t shard = 0; shard < files_.size(); ++shard) {
    for (const std::string& name : files_[shard].names()) {
      shard_of_.emplace(name, shard);
      names_.push_back(name);
    }
  }
}

bool SafetensorsCheckpoint::contains(std::string_view name) const {
  return shard_of_.find(name) != shard_of_.end();
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(std::string_view name) const {
  const auto found = shard_of_.find(name);
  if (found == shard_of_.end()) {
    throw safetensors_format::missing_tensor_error(path_.string(), name, names_);
  }
  return files_[found->second];
}

const TensorInfo& SafetensorsCheckpoint::info(std::string_view name) const {
  return file_of(name).info(name);
}

Tensor SafetensorsCheckpoint::tensor(std::string_view name) const {
  return file_of(name).tensor(name);
}

std::uint64_t SafetensorsCheckpoint::data_bytes() const {
  std::uint64_t total = 0;
  for (const SafetensorsFile& file : files_) {
    total += file.data_bytes();
  }
  return total;
}

}  // namespace ethereal
