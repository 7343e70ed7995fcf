#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>

#include "cli/run_command.h"
#include "io/safetensors_checkpoint.h"

namespace ethereal::test {
namespace {

namespace fs = std::filesystem;

const fs::path kData = ETHEREAL_TEST_DATA_DIR;

// Largest absolute difference between two tensors of the same element count.
float max_abs_difference(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_floats();
  const std::vector<float> y = b.to_floats();
  EXPECT_EQ(x.size(), y.size());
  float worst = 0.0f;
  for (std::size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
    worst = std::max(worst, std::abs(x[i] - y[i]));
  }
  return worst;
}

struct ParityCase {
  std::string component;
  std::string input;  // relative to tests/data/models
  std::string output_name;
  std::string expected_name;
};

// Runs each component through the command line on the committed reference vectors; f32
// compute, so the tolerance reflects the reference's own f32-versus-f64 gap (below 2e-5).
TEST(RunComponentCommand, MatchesReferenceVectors) {
  const ParityCase cases[] = {
      {"transformer", "transformer/case_one_reference.safetensors", "sample", "output.sample"},
      {"transformer", "transformer/case_two_references.safetensors", "sample", "output.sample"},
      {"vae_encode", "vae/encode.safetensors", "mean", "output.mean"},
      {"vae_decode", "vae/decode.safetensors", "image", "output.image"},
      {"vision", "text_encoder/vision.safetensors", "image_embeds", "output.image_embeds"},
      {"text_encoder", "text_encoder/language_model.safetensors", "last_hidden_state",
       "output.last_hidden_state"},
  };
  for (const ParityCase& c : cases) {
    const fs::path output = fs::path(::testing::TempDir()) /
                            ("run_component_" + std::to_string(::getpid()) + ".safetensors");
    const fs::path input = kData / "models" / c.input;
    const CommandResult result = run_ethereal(
        {"run-component", "--model", (kData / "models" / "tiny").string(), "--component",
         c.component, "--input", input.string(), "--output", output.string()});
    ASSERT_EQ(result.exit_status, 0) << c.input << ": " << result.standard_error;
    const SafetensorsCheckpoint produced = SafetensorsCheckpoint::open(output);
    const SafetensorsCheckpoint expected = SafetensorsCheckpoint::open(input);
    const Tensor actual = produced.tensor(c.output_name);
    const Tensor reference = expected.tensor(c.expected_name);
    EXPECT_EQ(actual.numel(), reference.numel()) << c.input;
    EXPECT_LT(max_abs_difference(actual, reference), 1e-4f) << c.input;
    fs::remove(output);
  }
}

TEST(RunComponentCommand, RejectsUnknownComponentAndMissingInput) {
  const fs::path model = kData / "models" / "tiny";
  const CommandResult unknown =
      run_ethereal({"run-component", "--model", model.string(), "--component", "unet", "--input",
                    "x.safetensors", "--output", "y.safetensors"});
  EXPECT_EQ(unknown.exit_status, 2);
  EXPECT_NE(unknown.standard_error.find("unet"), std::string::npos) << unknown.standard_error;

  // The VAE file has no transformer inputs.
  const fs::path output = fs::path(::testing::TempDir()) / "never.safetensors";
  const CommandResult missing = run_ethereal(
      {"run-component", "--model", model.string(), "--component", "transformer", "--input",
       (kData / "models" / "vae" / "encode.safetensors").string(), "--output", output.string()});
  EXPECT_EQ(missing.exit_status, 2);
  EXPECT_NE(missing.standard_error.find("\"hidden_states\" is missing"), std::string::npos)
      << missing.standard_error;
  EXPECT_FALSE(fs::exists(output));
}

}  // namespace
}  // namespace ethereal::test
