#include "pipeline/edit_pipeline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "io/safetensors_checkpoint.h"
#include "io/safetensors_writer.h"
#include "models/tiny_model.h"
#include "pipeline/latents.h"
#include "runtime/error.h"
#include "support/files.h"
#include "support/images.h"

namespace ethereal {
namespace {

namespace fs = std::filesystem;

class EditPipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = test_support::create_temporary_directory("edit_pipeline");
    write_tiny_model(root_ / "model", 3);
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static EditRequest small_request() {
    EditRequest request;
    request.images = {test_support::gradient_image(48, 40, 40, 10, 1)};
    request.prompt = "turn the lights on";
    request.steps = 2;
    request.seed = 5;
    request.output_size = ImageSize{48, 32};
    return request;
  }

  static fs::path root_;
};

fs::path EditPipelineTest::root_;

// Re-saves every checkpoint of the model through our own writer: a save/load round trip of
// the tiny model must give the same edit, byte for byte.
TEST_F(EditPipelineTest, SaveLoadRoundTripGivesSameEdit) {
  const fs::path copy = root_ / "resaved";
  fs::copy(root_ / "model", copy, fs::copy_options::recursive);
  for (const char* file :
       {"transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}) {
    const SafetensorsCheckpoint original = SafetensorsCheckpoint::open(root_ / "model" / file);
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& name : original.names()) {
      tensors.emplace_back(name, original.tensor(name).clone());
    }
    fs::remove(copy / file);
    write_safetensors(copy / file, tensors);
  }

  const EditRequest request = small_request();
  const EditResult first =
      EditPipeline::load(ModelDirectory::open(root_ / "model"), ModelPrecision::bf16())
          .run(request);
  const EditResult second =
      EditPipeline::load(ModelDirectory::open(copy), ModelPrecision::bf16()).run(request);
  EXPECT_EQ(first.size, (ImageSize{48, 32}));
  EXPECT_EQ(first.image.width(), 48);
  EXPECT_EQ(first.image.height(), 32);
  EXPECT_EQ(first.image, second.image);
}

TEST_F(EditPipelineTest, TwoReferencesWithoutGuidance) {
  const EditPipeline pipeline =
      EditPipeline::load(ModelDirectory::open(root_ / "model"), ModelPrecision::f32());
  EditRequest request = small_request();
  request.images.push_back(test_support::gradient_image(30, 60, 80, 20, 2));
  request.cfg_scale = 1.0;
  request.output_size.reset();

  std::vector<std::string> stages;
  const EditResult result =
      pipeline.run(request, {}, [&](const EditProgress& p) { stages.push_back(p.stage); });
  // The default size follows the last image (1:2) at about 1024^2 pixels.
  EXPECT_EQ(result.size.width % 16, 0);
  EXPECT_GT(result.size.height, result.size.width);
  EXPECT_EQ(stages.front(), "text_encoding");
  EXPECT_EQ(stages.back(), "vae_decode");
  EXPECT_EQ(std::count(stages.begin(), stages.end(), "denoising"), 2);
  // Target tokens plus both references' tokens.
  const std::int64_t target = (result.size.width / 16) * (result.size.height / 16);
  EXPECT_GT(result.image_tokens, target);
}

TEST_F(EditPipelineTest, RejectsInvalidRequests) {
  const EditPipeline pipeline =
      EditPipeline::load(ModelDirectory::open(root_ / "model"), ModelPrecision::f32());
  EditRequest no_images = small_request();
  no_images.images.clear();
  EXPECT_THROW(pipeline.run(no_images), InvalidInputError);

  EditRequest tiny_image = small_request();
  tiny_image.images = {test_support::gradient_image(8, 8)};
  EXPECT_THROW(pipeline.run(tiny_image), InvalidInputError);

  EditRequest tiny_references = small_request();
  tiny_references.reference_pixels = 100.0 * 100.0;
  try {
    pipeline.run(tiny_references);
    FAIL() << "a reference area of 100x100 pixels was accepted";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("10000"), std::string::npos) << error.what();
  }

  EditRequest noise_file = small_request();
  noise_file.initial_noise = root_ / "noise.safetensors";
  write_safetensors(*noise_file.initial_noise,
                    std::vector<std::pair<std::string, Tensor>>{
                        {"noise", Tensor::zeros({1, 16, 3, 3}, DType::f32)}});
  try {
    pipeline.run(noise_file);
    FAIL() << "a noise tensor of the wrong shape was accepted";
  } catch (const InvalidInputError& error) {
    EXPECT_NE(std::string(error.what()).find("[1, 16, 4, 6]"), std::string::npos) << error.what();
  }
}

TEST_F(EditPipelineTest, InitialNoiseFileReplacesSeed) {
  const EditPipeline pipeline =
      EditPipeline::load(ModelDirectory::open(root_ / "model"), ModelPrecision::f32());
  EditRequest request = small_request();
  const fs::path noise_path = root_ / "seed_noise.safetensors";
  write_safetensors(noise_path, std::vector<std::pair<std::string, Tensor>>{
                                    {"noise", gaussian_noise({1, 16, 4, 6}, 5)}});
  const EditResult seeded = pipeline.run(request);
  request.initial_noise = noise_path;
  request.seed = 999;  // ignored when a noise file is given
  const EditResult from_file = pipeline.run(request);
  EXPECT_EQ(seeded.image, from_file.image);
}

}  // namespace
}  // namespace ethereal
