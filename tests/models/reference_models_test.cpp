// Sparse full-size reference models: file sizes against the published checkpoints, dry-run
// loads through the real loaders, and a dry-run edit at 1024 x 1024.

#include "models/reference_models.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "io/model_directory.h"
#include "models/qwen2_5_vl/text_encoder.h"
#include "models/qwen_image/transformer.h"
#include "models/qwen_image/transformer_tensor_names.h"
#include "models/qwen_image/vae.h"
#include "pipeline/edit_pipeline.h"
#include "runtime/allocator.h"
#include "runtime/error.h"
#include "support/files.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr std::string_view kModel = "qwen-image-edit-2511";

// Parameter counts of Qwen-Image-Edit-2511 (bf16, 2 bytes each), summed from the published
// tensor shapes. The transformer has 60 blocks of 339,831,296 plus 40,523,328 top-level
// parameters. The text encoder is the Qwen2.5-VL-7B language model with lm_head and the vision
// tower, and the VAE is the Wan-2.1 VAE.
constexpr std::uint64_t kTransformerBytes = 2 * 20'430'401'088ull;
constexpr std::uint64_t kTextEncoderBytes = 2 * 8'292'166'656ull;
constexpr std::uint64_t kLmHeadBytes = 2ull * 152064 * 3584;
constexpr std::uint64_t kVaeBytes = 2 * 126'892'531ull;

// Published file sizes: the ComfyUI single-file bf16 transformer (40.9 GB), text encoder
// (16.6 GB) and VAE (254 MB).
constexpr double kPublishedTransformerBytes = 40.9e9;
constexpr double kPublishedTextEncoderBytes = 16.6e9;
constexpr double kPublishedVaeBytes = 254e6;

// Sizes of the safetensors files of one folder.
struct FolderBytes {
  int files = 0;
  std::uint64_t apparent = 0;   // file sizes
  std::uint64_t allocated = 0;  // disk blocks (st_blocks * 512)
  std::uint64_t headers = 0;    // 8-byte length prefix plus JSON header, per file
};

FolderBytes safetensors_bytes(const fs::path& folder) {
  FolderBytes bytes;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() != ".safetensors") {
      continue;
    }
    struct stat status {};
    if (::stat(entry.path().c_str(), &status) != 0) {
      throw std::runtime_error("cannot stat " + entry.path().string());
    }
    std::ifstream in(entry.path(), std::ios::binary);
    unsigned char prefix[8] = {};
    in.read(reinterpret_cast<char*>(prefix), 8);
    std::uint64_t header_length = 0;
    for (int i = 7; i >= 0; --i) {
      header_length = (header_length << 8) | prefix[i];
    }
    ++bytes.files;
    bytes.apparent += static_cast<std::uint64_t>(status.st_size);
    bytes.allocated += static_cast<std::uint64_t>(status.st_blocks) * 512;
    bytes.headers += 8 + header_length;
  }
  return bytes;
}

// True when a 64 MiB file made by ftruncate takes less than 1 MiB of disk in `directory`.
bool supports_sparse_files(const fs::path& directory) {
  const fs::path probe = directory / "sparse_probe";
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return false;
  }
  bool sparse = false;
  struct stat status {};
  if (::ftruncate(fd, 64 << 20) == 0 && ::fstat(fd, &status) == 0) {
    sparse = static_cast<std::uint64_t>(status.st_blocks) * 512 < (1u << 20);
  }
  ::close(fd);
  fs::remove(probe);
  return sparse;
}

// Resident set size of this process from /proc/self/status, in bytes.
std::uint64_t resident_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::stoull(line.substr(6)) * 1024;
    }
  }
  return 0;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

TEST(ReferenceModels, ListsQwenImageEdit2511) {
  const std::vector<std::string> names = reference_model_names();
  EXPECT_NE(std::find(names.begin(), names.end(), kModel), names.end());
}

TEST(ReferenceModels, WeightBytesMatchPublishedShapes) {
  EXPECT_EQ(reference_model_weight_bytes(kModel, "transformer"), kTransformerBytes);
  EXPECT_EQ(reference_model_weight_bytes(kModel, "text_encoder"), kTextEncoderBytes);
  EXPECT_EQ(reference_model_weight_bytes(kModel, "vae"), kVaeBytes);
  EXPECT_NEAR(static_cast<double>(kTransformerBytes), kPublishedTransformerBytes,
              0.01 * kPublishedTransformerBytes);
  EXPECT_NEAR(static_cast<double>(kTextEncoderBytes), kPublishedTextEncoderBytes,
              0.01 * kPublishedTextEncoderBytes);
  EXPECT_NEAR(static_cast<double>(kVaeBytes), kPublishedVaeBytes, 0.01 * kPublishedVaeBytes);
}

TEST(ReferenceModels, RejectsUnknownNames) {
  try {
    reference_model_weight_bytes("qwen-image-edit-2409", "vae");
    FAIL() << "expected an InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_THAT(error.what(), HasSubstr("unknown reference model \"qwen-image-edit-2409\""));
    EXPECT_THAT(error.what(), HasSubstr("qwen-image-edit-2511"));
  }
  try {
    reference_model_weight_bytes(kModel, "unet");
    FAIL() << "expected an InvalidInputError";
  } catch (const InvalidInputError& error) {
    EXPECT_THAT(error.what(), HasSubstr("unknown model component \"unet\""));
  }
}

// One sparse copy shared by the tests below, written once.
class SparseReferenceModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("reference_model");
    sparse_ = supports_sparse_files(root_);
    if (sparse_) {
      const auto start = std::chrono::steady_clock::now();
      write_sparse_model(model_directory(), kModel);
      std::printf("write_sparse_model: %.2f s\n", seconds_since(start));
    }
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  void SetUp() override {
    if (!sparse_) {
      GTEST_SKIP() << "the temporary directory's file system does not keep sparse files";
    }
  }

  static fs::path model_directory() { return root_ / "model"; }

  static fs::path root_;
  static bool sparse_;
};

fs::path SparseReferenceModelTest::root_;
bool SparseReferenceModelTest::sparse_ = false;

TEST_F(SparseReferenceModelTest, FilesHavePublishedSizes) {
  const FolderBytes transformer = safetensors_bytes(model_directory() / "transformer");
  const FolderBytes text_encoder = safetensors_bytes(model_directory() / "text_encoder");
  const FolderBytes vae = safetensors_bytes(model_directory() / "vae");
  EXPECT_EQ(transformer.files, 9);
  EXPECT_EQ(text_encoder.files, 4);
  EXPECT_EQ(vae.files, 1);
  EXPECT_EQ(transformer.apparent, kTransformerBytes + transformer.headers);
  EXPECT_EQ(text_encoder.apparent, kTextEncoderBytes + text_encoder.headers);
  EXPECT_EQ(vae.apparent, kVaeBytes + vae.headers);
  // Only the headers (a few hundred KB in all) and partial blocks take disk.
  EXPECT_LT(transformer.allocated + text_encoder.allocated + vae.allocated, 16u << 20);
}

// Bytes the loaders keep of the stored tensors of `component`, before oneDNN pads packed
// weights to its block sizes: weights and norm scales stay bf16, biases become f32, lm_head
// is skipped. The VAE keeps the last temporal slice of each 3 x 3 x 3 causal convolution
// (a single frame uses only that slice) and skips the time_conv weights, which images never
// use.
std::uint64_t loaded_bytes(std::string_view component) {
  std::uint64_t bytes = 0;
  for (const TensorSpec& spec : reference_model_tensor_specs(kModel, component)) {
    const auto elements = static_cast<std::uint64_t>(shape_numel(spec.shape));
    if (spec.name.starts_with("lm_head.") || spec.name.find(".time_conv.") != std::string::npos) {
      continue;
    }
    if (spec.name.ends_with(".bias")) {
      bytes += 4 * elements;
    } else if (component == "vae" && spec.shape.size() == 5 && spec.shape[2] == 3) {
      bytes += 2 * elements / 3;
    } else {
      bytes += 2 * elements;
    }
  }
  return bytes;
}

TEST_F(SparseReferenceModelTest, DryRunLoadsAllocateWeightBytes) {
  const ModelDirectory model = ModelDirectory::open(model_directory());
  const ModelPrecision precision = ModelPrecision::bf16();
  {
    CpuCachingAllocator dry({.dry_run = true});
    ScopedAllocator scope(dry);
    const SafetensorsCheckpoint checkpoint = model.open_weights(ModelComponent::transformer);
    const QwenImageTransformer transformer = QwenImageTransformer::load(
        checkpoint,
        QwenImageTransformerConfig::from_file(*model.config_path(ModelComponent::transformer)),
        precision, comfy_transformer_tensor_name);
    // Every transformer dimension is a multiple of 64, so the packed layouts need no padding.
    EXPECT_EQ(static_cast<std::uint64_t>(dry.stats().requested_bytes.current),
              loaded_bytes("transformer"));
  }
  {
    CpuCachingAllocator dry({.dry_run = true});
    ScopedAllocator scope(dry);
    const Qwen25VlTextEncoder encoder =
        Qwen25VlTextEncoder::load(model.folder(ModelComponent::text_encoder), precision);
    // The vision MLP width 3420 and the 1176 values of a patch row are padded in the packed
    // layouts (about 6 MB with 32- and 64-wide blocks).
    const auto requested = static_cast<std::uint64_t>(dry.stats().requested_bytes.current);
    const std::uint64_t expected = loaded_bytes("text_encoder");
    EXPECT_EQ(expected, kTextEncoderBytes - kLmHeadBytes + 2 * 561'408);
    EXPECT_GE(requested, expected);
    EXPECT_LE(requested - expected, expected / 1000);
  }
  {
    CpuCachingAllocator dry({.dry_run = true});
    ScopedAllocator scope(dry);
    const QwenImageVae vae =
        QwenImageVae::load_directory(model.folder(ModelComponent::vae), precision);
    // Padding of the 3-channel conv_in and conv_out in the packed layouts and the unused
    // logvar half of quant_conv keep the two apart by a few tens of KB.
    const auto requested = static_cast<std::uint64_t>(dry.stats().requested_bytes.current);
    const std::uint64_t expected = loaded_bytes("vae");
    EXPECT_NEAR(static_cast<double>(requested), static_cast<double>(expected), expected / 1000.0);
  }
}

// The whole edit at full size without touching tensor data, in each placement: a kernel that
// read or wrote a dry tensor would throw, and reading the mapped weights would grow the
// resident set by gigabytes.
class SparseReferenceModelEditTest : public SparseReferenceModelTest,
                                     public ::testing::WithParamInterface<Placement> {};

TEST_P(SparseReferenceModelEditTest, DryRunEditCompletes) {
  const Placement placement = GetParam();
  const std::uint64_t resident_before = resident_bytes();
  CpuCachingAllocator dry({.dry_run = true});
  ScopedAllocator scope(dry);

  PipelineLoadOptions options;
  options.placement = placement;
  auto start = std::chrono::steady_clock::now();
  const EditPipeline pipeline =
      EditPipeline::load(ModelDirectory::open(model_directory()), options);
  const double load_s = seconds_since(start);
  const auto loaded = static_cast<std::uint64_t>(dry.stats().requested_bytes.current);
  if (placement == Placement::resident) {
    EXPECT_NEAR(static_cast<double>(loaded),
                static_cast<double>(loaded_bytes("transformer") + loaded_bytes("text_encoder") +
                                    loaded_bytes("vae")),
                1e-3 * static_cast<double>(loaded));
  }

  EditRequest request;
  request.images = {Image(1024, 1024, 3)};
  request.prompt = "Make the sky blue and add a red hat to the cat.";
  request.steps = 2;
  request.cfg_scale = 4.0;
  request.output_size = ImageSize{1024, 1024};
  start = std::chrono::steady_clock::now();
  const EditResult result = pipeline.run(request);
  const double run_s = seconds_since(start);
  const std::int64_t resident_growth =
      static_cast<std::int64_t>(resident_bytes()) - static_cast<std::int64_t>(resident_before);
  const std::int64_t peak = dry.stats().requested_bytes.peak;

  EXPECT_EQ(result.steps, 2);
  EXPECT_EQ(result.image.width(), 1024);
  EXPECT_EQ(result.image.height(), 1024);
  // 64 x 64 target tokens and as many reference tokens.
  EXPECT_EQ(result.image_tokens, 2 * 64 * 64);
  EXPECT_GT(peak, static_cast<std::int64_t>(loaded));
  EXPECT_LT(resident_growth, std::int64_t{1} << 30);
  std::printf(
      "dry run of %.*s, %.*s, 1024x1024, 2 steps, CFG 4: load %.2f s, edit %.2f s; loaded "
      "%.2f GB, peak %.2f GB requested; %lld prompt tokens; resident set grew by %.1f MB\n",
      static_cast<int>(kModel.size()), kModel.data(),
      static_cast<int>(placement_name(placement).size()), placement_name(placement).data(), load_s,
      run_s, static_cast<double>(loaded) / 1e9, static_cast<double>(peak) / 1e9,
      static_cast<long long>(result.prompt_tokens), static_cast<double>(resident_growth) / 1e6);
}

INSTANTIATE_TEST_SUITE_P(Placements, SparseReferenceModelEditTest,
                         ::testing::Values(Placement::resident, Placement::model_offload,
                                           Placement::sequential_offload),
                         [](const ::testing::TestParamInfo<Placement>& info) {
                           return std::string(placement_name(info.param));
                         });

}  // namespace
}  // namespace ethereal
