// SafetensorsCheckpoint: single files, sharded checkpoints with an index, directories, and the
// index errors that must name the index, the shard and the tensor.

#include "io/safetensors_checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "io/safetensors_writer.h"
#include "runtime/error.h"
#include "safetensors_test_util.h"
#include "support/errors.h"
#include "support/inputs.h"

namespace ethereal {
namespace {

using test_support::arange_tensor;
using test_support::error_message;
using test_support::TemporaryDirectory;
using test_support::write_file;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Writes shards a.safetensors ("x", "y") and b.safetensors ("z") and returns the index text
// that matches them.
std::string write_two_shards(const TemporaryDirectory& directory) {
  write_safetensors(directory / "a.safetensors", {{"x", arange_tensor({2, 3}, 0.0f)},
                                                  {"y", arange_tensor({4}, 10.0f, DType::bf16)}});
  write_safetensors(directory / "b.safetensors", {{"z", arange_tensor({3}, 20.0f)}});
  return R"({"metadata":{"total_size":44,"format":"pt"},)"
         R"("weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}})";
}

TEST(SafetensorsCheckpoint, OpensSingleFile) {
  TemporaryDirectory directory;
  const auto path = directory / "model.safetensors";
  write_safetensors(path, {{"w", arange_tensor({2, 2}, 1.0f)}}, {{"format", "pt"}});

  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(path);
  EXPECT_EQ(checkpoint.path(), path);
  EXPECT_THAT(checkpoint.names(), ElementsAre("w"));
  EXPECT_EQ(checkpoint.metadata().at("format"), "pt");
  EXPECT_EQ(checkpoint.tensor("w").to_floats(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(checkpoint.file_of("w").path(), path);
  EXPECT_EQ(checkpoint.data_bytes(), 16u);
}

TEST(SafetensorsCheckpoint, OpensShardsThroughIndex) {
  TemporaryDirectory directory;
  const auto index = directory / "model.safetensors.index.json";
  write_file(index, write_two_shards(directory));

  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(index);
  ASSERT_EQ(checkpoint.files().size(), 2u);
  EXPECT_EQ(checkpoint.files()[0].path(), directory / "a.safetensors");
  EXPECT_EQ(checkpoint.files()[1].path(), directory / "b.safetensors");
  // Shard by shard; within a.safetensors the f32 tensor precedes the bf16 one.
  EXPECT_THAT(checkpoint.names(), ElementsAre("x", "y", "z"));
  EXPECT_TRUE(checkpoint.contains("z"));
  EXPECT_FALSE(checkpoint.contains("w"));
  EXPECT_EQ(checkpoint.file_of("z").path(), directory / "b.safetensors");
  EXPECT_EQ(checkpoint.info("y").stored_dtype, "BF16");
  EXPECT_EQ(checkpoint.info("y").shape, (Shape{4}));
  EXPECT_EQ(checkpoint.tensor("y").to_floats(), (std::vector<float>{10, 11, 12, 13}));
  EXPECT_EQ(checkpoint.tensor("z").to_floats(), (std::vector<float>{20, 21, 22}));
  EXPECT_EQ(checkpoint.metadata().at("total_size"), "44");
  EXPECT_EQ(checkpoint.metadata().at("format"), "pt");
  EXPECT_EQ(checkpoint.data_bytes(), 24u + 8u + 12u);

  const std::string message = error_message([&] { checkpoint.tensor("zz"); });
  EXPECT_THAT(message, HasSubstr(index.string() + ": tensor \"zz\" not found among its 3 "
                                                  "tensors; did you mean \"z\"?"));
}

TEST(SafetensorsCheckpoint, ResolvesDirectories) {
  TemporaryDirectory sharded;
  write_file(sharded / "model.safetensors.index.json", write_two_shards(sharded));
  const SafetensorsCheckpoint from_index = SafetensorsCheckpoint::open(sharded.path());
  EXPECT_EQ(from_index.path(), sharded / "model.safetensors.index.json");
  EXPECT_EQ(from_index.names().size(), 3u);

  TemporaryDirectory single;
  write_safetensors(single / "only.safetensors", {{"w", arange_tensor({1}, 5.0f)}});
  write_file(single / "config.json", "{}");
  const SafetensorsCheckpoint from_file = SafetensorsCheckpoint::open(single.path());
  EXPECT_EQ(from_file.path(), single / "only.safetensors");
  EXPECT_EQ(from_file.tensor("w").to_floats(), (std::vector<float>{5}));
}

TEST(SafetensorsCheckpoint, RejectsAmbiguousOrEmptyDirectories) {
  TemporaryDirectory empty;
  write_file(empty / "config.json", "{}");
  EXPECT_THAT(error_message([&] { SafetensorsCheckpoint::open(empty.path()); }),
              HasSubstr(empty.path().string() + ": directory contains no *.safetensors file "
                                                "and no *.safetensors.index.json"));

  TemporaryDirectory two_files;
  write_safetensors(two_files / "model.safetensors", {{"w", arange_tensor({1}, 0.0f)}});
  write_safetensors(two_files / "model.fp16.safetensors",
                    {{"w", arange_tensor({1}, 0.0f, DType::f16)}});
  EXPECT_THAT(error_message([&] { SafetensorsCheckpoint::open(two_files.path()); }),
              HasSubstr("directory contains 2 safetensors files (model.fp16.safetensors, "
                        "model.safetensors) and no *.safetensors.index.json"));

  TemporaryDirectory two_indexes;
  write_file(two_indexes / "a.safetensors.index.json", "{}");
  write_file(two_indexes / "b.safetensors.index.json", "{}");
  EXPECT_THAT(error_message([&] { SafetensorsCheckpoint::open(two_indexes.path()); }),
              HasSubstr("directory contains 2 index files (a.safetensors.index.json, "
                        "b.safetensors.index.json)"));

  EXPECT_THAT(error_message([&] { SafetensorsCheckpoint::open(empty / "absent"); }),
              HasSubstr("absent: checkpoint not found"));
}

TEST(SafetensorsCheckpoint, RejectsMissingShard) {
  TemporaryDirectory directory;
  write_two_shards(directory);
  const auto index = directory / "model.safetensors.index.json";
  write_file(index, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors",)"
                    R"("z":"b.safetensors","q":"c.safetensors"}})");
  const std::string message = error_message([&] { SafetensorsCheckpoint::open(index); });
  EXPECT_THAT(message, HasSubstr(index.string() +
                                 ": shard \"c.safetensors\" (listed for 1 "
                                 "tensors, such as \"q\") not found at " +
                                 (directory / "c.safetensors").string()));
}

TEST(SafetensorsCheckpoint, RejectsTensorAbsentFromItsShard) {
  TemporaryDirectory directory;
  write_two_shards(directory);
  const auto index = directory / "model.safetensors.index.json";
  write_file(index, R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors",)"
                    R"("z":"b.safetensors","w":"b.safetensors"}})");
  const std::string message = error_message([&] { SafetensorsCheckpoint::open(index); });
  EXPECT_THAT(message, HasSubstr(index.string() +
                                 ": weight_map puts tensor \"w\" in shard "
                                 "\"b.safetensors\", but " +
                                 (directory / "b.safetensors").string() + " does not contain it"));
}

TEST(SafetensorsCheckpoint, RejectsTensorStoredInTwoShards) {
  TemporaryDirectory directory;
  write_safetensors(directory / "a.safetensors", {{"x", arange_tensor({1}, 0.0f)}});
  write_safetensors(directory / "b.safetensors",
                    {{"x", arange_tensor({1}, 1.0f)}, {"y", arange_tensor({1}, 2.0f)}});
  const auto index = directory / "model.safetensors.index.json";
  write_file(index, R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  const std::string message = error_message([&] { SafetensorsCheckpoint::open(index); });
  EXPECT_THAT(message, HasSubstr("tensor \"x\" appears in shards \"b.safetensors\" and "
                                 "\"a.safetensors\" (weight_map lists \"a.safetensors\")"));
}

TEST(SafetensorsCheckpoint, RejectsShardTensorMissingFromIndex) {
  TemporaryDirectory directory;
  write_two_shards(directory);
  const auto index = directory / "model.safetensors.index.json";
  write_file(index, R"({"weight_map":{"x":"a.safetensors","z":"b.safetensors"}})");
  const std::string message = error_message([&] { SafetensorsCheckpoint::open(index); });
  EXPECT_THAT(message, HasSubstr("shard \"a.safetensors\" contains tensor \"y\", which "
                                 "weight_map does not list"));
}

TEST(SafetensorsCheckpoint, RejectsMalformedIndexes) {
  TemporaryDirectory directory;
  write_two_shards(directory);
  const auto index = directory / "model.safetensors.index.json";
  struct Case {
    std::string label;
    std::string text;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"invalid JSON", R"({"weight_map": )", "invalid JSON at file offset"},
      {"top level array", "[]", "index must be a JSON object, found array []"},
      {"no weight_map", R"({"metadata":{}})", "index needs \"weight_map\""},
      {"empty weight_map", R"({"weight_map":{}})",
       "index needs \"weight_map\", a non-empty object"},
      {"shard not a string", R"({"weight_map":{"x":1}})",
       "weight_map \"x\" must be a shard file name, found number 1"},
      {"shard outside the directory", R"({"weight_map":{"x":"../a.safetensors"}})",
       "weight_map \"x\" names shard \"../a.safetensors\"; a shard must be a plain file name"},
      {"duplicate tensor", R"({"weight_map":{"x":"a.safetensors","x":"b.safetensors"}})",
       "tensor \"x\" appears twice in weight_map"},
      {"metadata not an object", R"({"metadata":3,"weight_map":{"x":"a.safetensors"}})",
       "\"metadata\" must be an object, found number 3"},
  };
  for (const Case& test : cases) {
    SCOPED_TRACE(test.label);
    write_file(index, test.text);
    const std::string message = error_message([&] { SafetensorsCheckpoint::open(index); });
    EXPECT_THAT(message, HasSubstr(index.string() + ": "));
    EXPECT_THAT(message, HasSubstr(test.expected));
  }
}

TEST(SafetensorsCheckpoint, ReadsShardedWriterOutput) {
  TemporaryDirectory directory;
  std::vector<SafetensorsEntry> entries;
  for (int i = 0; i < 5; ++i) {
    entries.push_back(
        safetensors_entry("layer." + std::to_string(i), arange_tensor({4, 4}, 16.0f * i)));
  }
  // 64 bytes per tensor and at most 150 bytes per shard: shards of 2, 2 and 1 tensors.
  const auto index =
      write_sharded_safetensors(directory.path(), "model", entries, 150, {{"format", "pt"}});
  EXPECT_EQ(index, directory / "model.safetensors.index.json");

  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory.path());
  ASSERT_EQ(checkpoint.files().size(), 3u);
  EXPECT_EQ(checkpoint.files()[2].path(), directory / "model-00003-of-00003.safetensors");
  EXPECT_THAT(checkpoint.names(),
              ElementsAre("layer.0", "layer.1", "layer.2", "layer.3", "layer.4"));
  EXPECT_EQ(checkpoint.file_of("layer.3").path(), directory / "model-00002-of-00003.safetensors");
  EXPECT_EQ(checkpoint.metadata().at("total_size"), "320");
  EXPECT_EQ(checkpoint.metadata().at("format"), "pt");
  EXPECT_EQ(checkpoint.files()[0].metadata().at("format"), "pt");
  for (int i = 0; i < 5; ++i) {
    const std::vector<float> values = checkpoint.tensor("layer." + std::to_string(i)).to_floats();
    EXPECT_EQ(values.front(), 16.0f * i);
    EXPECT_EQ(values.back(), 16.0f * i + 15.0f);
  }
}

}  // namespace
}  // namespace ethereal
