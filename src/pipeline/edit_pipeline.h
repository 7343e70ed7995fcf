// The Qwen-Image-Edit-Plus pipeline (Edit-2509 and Edit-2511): one or more input images and an
// instruction in, one edited image out.
//
// Per input image: a vision-language copy of ~384^2 pixels (Lanczos, 32-multiples) goes
// through the Qwen2-VL processor and the vision tower; a VAE copy of ~1024^2 pixels
// (Lanczos, 32-multiples) is VAE-encoded to the posterior mean, normalised and packed into
// reference tokens. The prompt template gets a "Picture i:" label per image; the text
// encoder's last hidden state, without the system-prompt tokens, conditions the transformer.
// Denoising starts from seeded noise (or a file), concatenates the reference tokens after the
// noisy target tokens at every step, applies true CFG with the per-token norm rescale when
// the CFG scale is above 1, and steps the flow-match Euler scheduler. The target tokens are
// unpacked, de-normalised and decoded.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/image.h"
#include "io/model_directory.h"
#include "models/model_precision.h"
#include "pipeline/geometry.h"

namespace ethereal {

struct EditRequest {
  std::vector<Image> images;  // RGB or any layout read_image returns; at least one
  std::string prompt;
  std::string negative_prompt = " ";
  int steps = 40;
  double cfg_scale = 4.0;
  std::uint64_t seed = 0;
  // A safetensors file with one f32 tensor "noise" of shape [1, 16, H/8, W/8] (a frame axis
  // [1, 16, 1, H/8, W/8] is accepted too), used instead of the seeded noise.
  std::optional<std::filesystem::path> initial_noise;
  std::optional<ImageSize> output_size;       // default: last image's ratio at 1024^2
  std::optional<std::vector<double>> sigmas;  // custom schedule; its size is the step count
};

// Working-memory knobs, set by the memory manager (0 = the kernels' defaults).
struct EditMemoryOptions {
  std::int64_t attention_query_tile = 0;
  bool vae_tiling = false;
  int vae_tile_px = 256;
  int vae_overlap_px = 64;
};

// A stage boundary reported while an edit runs.
struct EditProgress {
  std::string stage;  // "text_encoding", "vae_encode", "denoising", "vae_decode"
  int step = 0;       // denoising step (1-based) or 0
  int steps = 0;
  double seconds = 0.0;  // time of the stage or step that just ended
};
using EditProgressCallback = std::function<void(const EditProgress&)>;

struct EditResult {
  Image image;  // RGB, the requested output size
  ImageSize size;
  int steps = 0;
  double text_encoding_s = 0.0;
  double vae_encode_s = 0.0;
  double denoising_s = 0.0;
  double vae_decode_s = 0.0;
  std::vector<double> step_s;
  std::int64_t prompt_tokens = 0;  // conditional prompt, after the system-prompt drop
  std::int64_t image_tokens = 0;   // target plus reference tokens per transformer call
};

class EditPipeline {
 public:
  // Loads every component of the model directory, resident, with `precision`.
  static EditPipeline load(const ModelDirectory& model, ModelPrecision precision);

  EditPipeline(EditPipeline&&) noexcept;
  EditPipeline& operator=(EditPipeline&&) noexcept;
  ~EditPipeline();

  EditResult run(const EditRequest& request, const EditMemoryOptions& memory = {},
                 const EditProgressCallback& progress = {}) const;

 private:
  struct Components;
  explicit EditPipeline(std::unique_ptr<Components> components);
  std::unique_ptr<Components> components_;
};

// Checks a request before any model work: at least one image, a non-empty prompt, positive
// steps, sizes that the VAE and the transformer accept. Throws InvalidInputError.
void validate_edit_request(const EditRequest& request);

}  // namespace ethereal
