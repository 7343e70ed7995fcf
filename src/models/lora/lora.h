// LoRA files: reading, checking against a model, and applying them by merge or at run time.
//
// A LoRA stores, per linear layer ("module"), a low-rank update of its weight
// W [out, in]: W' = W + strength * (alpha / rank) * up @ down, with down [rank, in] and
// up [out, rank]. Accepted key layouts (docs/lora.md has examples):
//   - "<module>.lora_down.weight", "<module>.lora_up.weight" and an optional scalar
//     "<module>.alpha" (Qwen-Image-Lightning and most community files), with module prefix none,
//     "transformer.", "diffusion_model." or "model.diffusion_model.";
//   - PEFT / diffusers "<module>.lora_A.weight" (down) and "<module>.lora_B.weight" (up), also as
//     "lora_A.default.weight" / "lora_B.default.weight" and under the prefix "base_model.model."
//     (which may precede "transformer."). These files carry no alpha, so alpha = rank.
// Module names come out canonical: the diffusers transformer names with every prefix removed,
// such as "transformer_blocks.0.attn.to_q".
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "models/lora/low_rank_adapter.h"
#include "runtime/tensor.h"

namespace ethereal {

// One LoRA file to apply and how strongly.
struct LoraFile {
  std::filesystem::path path;
  float strength = 1.0f;
};

// Parses "FILE" or "FILE:SCALE" from the command line. The text after the last ':' is the
// strength, a finite decimal number (negative values subtract the update), so a file name that
// contains ':' needs an explicit ":SCALE". Throws InvalidInputError naming the text when the
// file part is empty or the strength is not a finite number.
LoraFile parse_lora_argument(std::string_view text);

// One module's factors as stored in one file, converted to f32.
struct LoraLayer {
  Tensor down;  // f32 [rank, in], contiguous, from the current allocator
  Tensor up;    // f32 [out, rank], contiguous, from the current allocator
  float alpha;  // = rank when the file has no alpha
  float strength;
  std::filesystem::path file;  // the file the factors came from, for messages

  std::int64_t rank() const { return down.size(0); }
  // strength * alpha / rank
  float scale() const;
};

class LoraSet {
 public:
  // Reads every file (see the layouts at the top of this file). The factors are copied out of
  // the file mapping into f32 tensors from the current allocator, so they are counted and the
  // files can close. Errors of SafetensorsFile::open (missing or malformed file) pass through.
  // Throws InvalidInputError naming the file and the key for each of these:
  //   - a key of another kind, such as "lora_mid", "dora_scale" or a kohya-style "lora_unet_..."
  //     name;
  //   - an up factor or alpha without its down partner, or the reverse;
  //   - one module stored twice in one file;
  //   - factors that are not 2-D float matrices, a rank mismatch between up and down, rank 0;
  //   - an alpha that is not one finite number, and non-finite factor values;
  //   - a file without any LoRA key.
  static LoraSet read(const std::vector<LoraFile>& files);

  bool empty() const { return layers_.empty(); }
  // Canonical module names, sorted.
  std::vector<std::string> modules() const;
  // The module's factors, one entry per file that touches it (in the order of the files given
  // to read()), or null when no file does.
  const std::vector<LoraLayer>* find(std::string_view module) const;

  // Checks every module against the model: `shape_of(module)` returns {out, in} of the linear
  // layer, or nullopt when the model has no such layer. When some modules match no layer, throws
  // InvalidInputError with their count and up to five of their names. Otherwise it throws one
  // that names the first module (in sorted order) whose factors do not fit the layer's shape.
  void check(const std::function<std::optional<std::pair<std::int64_t, std::int64_t>>(
                 std::string_view module)>& shape_of) const;

  // Output rows of weight per matrix product in merge_into(). The f32 temporary is
  // [kMergeRowsPerChunk, in], 12 MiB for in = 12288.
  static constexpr std::int64_t kMergeRowsPerChunk = 256;

  // weight [out, in] f32, contiguous: adds the sum over files of scale * up @ down. Each term is
  // an f32 oneDNN matmul (f32 accumulation, no reduced-precision math) computed for a chunk
  // of output rows and added with add_scaled_. A plain loop would be exact in the same sense, but
  // the Lightning LoRA alone needs about 0.87 T multiply-adds over its 720 layers. Does
  // nothing for a module the set lacks. A dry run, or a dry weight or factor, allocates the same
  // temporaries and changes nothing. Throws InvalidInputError naming the module and the file
  // when the weight's shape does not match the factors, and Error when the weight is not a
  // contiguous f32 matrix.
  void merge_into(std::string_view module, Tensor& weight_f32) const;

  // The run-time form of the module's update: the layers of all files appended
  // (LowRankAdapter::append) with bf16 factors, the dtype the models compute in. Returns an
  // empty adapter for a module the set lacks.
  LowRankAdapter adapter(std::string_view module) const;
  // The same with factors of `factor_dtype` (f32 or bf16).
  LowRankAdapter adapter(std::string_view module, DType factor_dtype) const;

  // Records that a module's update was merged or attached. merge_into() and adapter() do not
  // record anything themselves. Not thread-safe.
  void mark_applied(std::string_view module) const;
  // Modules never passed to mark_applied(), sorted, so a caller can verify coverage.
  std::vector<std::string> unused_modules() const;

  // Bytes of all stored factors.
  std::size_t nbytes() const;

  // Returns the Lightning step count implied by a file name: 4 for "...4steps..." or
  // "...4step...", and 8 for "8steps" or "8step". Letter case does not matter, and a '-' or '_'
  // may stand before "step". Other numbers ("14steps"), names with both counts and names
  // without a count give nullopt.
  static std::optional<int> lightning_steps_from_name(const std::filesystem::path& path);

 private:
  std::map<std::string, std::vector<LoraLayer>, std::less<>> layers_;
  mutable std::set<std::string, std::less<>> applied_;
};

}  // namespace ethereal
