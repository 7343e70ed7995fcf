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
#include "models/lora/lora.h"
#include "models/model_precision.h"
#include "models/qwen_image/transformer_block_cache.h"
#include "pipeline/geometry.h"
#include "pipeline/scheduler.h"
#include "quant/quant_policy.h"
#include "runtime/residency.h"

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
  std::optional<ImageSize> output_size;  // default: last image's ratio at 1024^2
  // Pixels of each reference image's VAE copy, at its own aspect ratio. The model was trained
  // with 1024^2; the memory manager lowers it with the output size when it reduces resolution.
  double reference_pixels = 1024.0 * 1024.0;
  std::optional<std::vector<double>> sigmas;  // custom schedule; its size is the step count
  // Replaces the model's scheduler configuration (the Lightning recipe uses a constant shift).
  std::optional<FlowMatchSchedulerConfig> scheduler;
};

// Where weights live while an edit runs.
enum class Placement : std::uint8_t {
  resident,            // every component loaded once and kept
  model_offload,       // one component at a time, in pipeline order
  sequential_offload,  // transformer blocks and text-encoder layers streamed, a few kept at once
};

// "resident", "model_offload", "sequential_offload".
std::string_view placement_name(Placement placement);
// Parses a name from placement_name; throws InvalidInputError listing the valid names.
Placement parse_placement(std::string_view name);

// How the pipeline loads its components.
struct PipelineLoadOptions {
  ModelPrecision precision = ModelPrecision::bf16();
  // Format of the transformer's and the text encoder's linear weights (quant_policy.h).
  quant::QuantPolicy quant;
  // LoRA files applied to the transformer, each with its strength.
  std::vector<LoraFile> loras;
  // Keeps LoRAs as run-time low-rank updates on quantised layers instead of merging them.
  bool lora_at_run_time = false;
  // resident: every component loaded here and kept. model_offload: each component loaded at
  // the start of each stage that uses it and released at its end (text encoder, VAE for the
  // references, transformer, VAE again for the output). sequential_offload: the same, except
  // that the transformer's blocks are streamed from the checkpoint during denoising, with only
  // the top-level weights loaded for the whole stage, and that the text encoder's vision tower
  // is loaded and released before its language-model layers stream. docs/placement.md has the
  // details.
  Placement placement = Placement::resident;
  // Transformer blocks, and text-encoder layers, kept loaded at once with sequential_offload (at
  // least 1; 2 lets the next block or layer load while one runs).
  int kept_blocks = 2;
  // Where sequential_offload streams the blocks from: the checkpoint, or a cache file of the
  // blocks in their device format (transformer_block_cache.h). The automatic policy uses the
  // cache when the format differs from the stored weights (quantised while loading, or with a
  // merged LoRA). The cache is written during load() when missing.
  BlockCachePolicy block_cache = BlockCachePolicy::automatic;
  // Folder of the cache files; empty selects default_block_cache_directory().
  std::filesystem::path block_cache_directory;
  // Receives every onload, offload and streamed block's compute start and end, on the thread
  // that does the work (block loads run on a worker thread), so it must be thread-safe.
  ResidencyEventSink on_residency_event;
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
  // Loads the model directory's components with `options`. With model_offload or
  // sequential_offload no weight stays loaded: each component is checked here against a
  // dry-run allocator and read again by every edit. Throws InvalidInputError for
  // kept_blocks < 1 and for a model whose files do not match its configuration.
  static EditPipeline load(const ModelDirectory& model, const PipelineLoadOptions& options);
  // Loads every component, resident, with `precision` and bf16 or f32 linear weights.
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
