// Flow-matching Euler scheduler with the semantics of diffusers'
// FlowMatchEulerDiscreteScheduler as configured for the Qwen-Image family.
//
// Schedule for N steps: s_i = linspace(1, 1/N, N) (or a caller's sigma list); with dynamic
// shifting, mu = m * L + b where L is the number of target image tokens and m, b interpolate
// (base_image_seq_len, base_shift) to (max_image_seq_len, max_shift); the exponential time
// shift gives sigma_i = e^mu / (e^mu + (1 / s_i - 1)), the linear one mu / (mu + (1 / s_i - 1)).
// Without dynamic shifting a constant `shift` applies: sigma = shift*s / (1 + (shift-1)*s).
// A terminal shift stretches the schedule so that the last sigma equals shift_terminal. A
// final sigma of 0 is appended. Timesteps are sigma * num_train_timesteps.
//
// Euler step: x_next = x + (sigma_next - sigma) * v, computed in f32.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/tensor.h"

namespace ethereal {

struct FlowMatchSchedulerConfig {
  int num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = true;
  double base_shift = 0.5;
  double max_shift = 0.9;
  int base_image_seq_len = 256;
  int max_image_seq_len = 8192;
  bool exponential_time_shift = true;  // time_shift_type "exponential" (else "linear")
  std::optional<double> shift_terminal = 0.02;

  // Reads a diffusers scheduler_config.json document; unknown keys are ignored (the file
  // carries bookkeeping keys such as _class_name), wrong types and unsupported options
  // (karras, exponential or beta sigmas, stochastic sampling, inverted sigmas) are
  // InvalidInputError naming `source` and the key.
  static FlowMatchSchedulerConfig from_json(const nlohmann::json& document,
                                            const std::string& source);
  static FlowMatchSchedulerConfig from_file(const std::filesystem::path& path);

  // The constant shift-3 schedule of the Lightning distillation recipe: base_shift =
  // max_shift = ln 3 with exponential shifting, no terminal shift.
  static FlowMatchSchedulerConfig lightning();
};

class FlowMatchEulerScheduler {
 public:
  explicit FlowMatchEulerScheduler(FlowMatchSchedulerConfig config);

  // Builds the schedule for `steps` steps and `image_seq_len` target tokens, from
  // linspace(1, 1/steps, steps) unless `sigmas` is given (then its size is the step count).
  void set_timesteps(int steps, int image_seq_len,
                     const std::optional<std::vector<double>>& sigmas = std::nullopt);

  // steps + 1 values, the last one 0.
  const std::vector<double>& sigmas() const { return sigmas_; }
  // steps values: sigma_i * num_train_timesteps.
  const std::vector<double>& timesteps() const { return timesteps_; }
  int steps() const { return static_cast<int>(timesteps_.size()); }
  double mu() const { return mu_; }

  // Returns latents + (sigma[i+1] - sigma[i]) * velocity in the dtype of `latents`,
  // computed in f32. Both tensors must be contiguous with the same shape.
  Tensor step(const Tensor& velocity, int index, const Tensor& latents) const;

  const FlowMatchSchedulerConfig& config() const { return config_; }

 private:
  double time_shift(double mu, double s) const;

  FlowMatchSchedulerConfig config_;
  std::vector<double> sigmas_;
  std::vector<double> timesteps_;
  double mu_ = 0.0;
};

}  // namespace ethereal
