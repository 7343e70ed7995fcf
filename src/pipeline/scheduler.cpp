#include "pipeline/scheduler.h"

#include <cmath>
#include <fstream>

#include <fmt/format.h>

#include "runtime/error.h"

namespace ethereal {

namespace {

template <typename T>
T read_key(const nlohmann::json& document, const std::string& key, T fallback,
           const std::string& source) {
  if (!document.contains(key) || document[key].is_null()) {
    return fallback;
  }
  try {
    return document[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw InvalidInputError(fmt::format("{}: key \"{}\" has the wrong type ({}): {}", source, key,
                                        document[key].type_name(), document[key].dump()));
  }
}

void reject_enabled(const nlohmann::json& document, const std::string& key,
                    const std::string& source) {
  if (read_key<bool>(document, key, false, source)) {
    throw InvalidInputError(fmt::format(
        "{}: \"{}\": true is not supported by the flow-match Euler scheduler; set it to false",
        source, key));
  }
}

}  // namespace

FlowMatchSchedulerConfig FlowMatchSchedulerConfig::from_json(const nlohmann::json& document,
                                                             const std::string& source) {
  if (!document.is_object()) {
    throw InvalidInputError(source + ": expected a JSON object");
  }
  FlowMatchSchedulerConfig config;
  config.num_train_timesteps =
      read_key<int>(document, "num_train_timesteps", config.num_train_timesteps, source);
  config.shift = read_key<double>(document, "shift", config.shift, source);
  config.use_dynamic_shifting =
      read_key<bool>(document, "use_dynamic_shifting", config.use_dynamic_shifting, source);
  config.base_shift = read_key<double>(document, "base_shift", config.base_shift, source);
  config.max_shift = read_key<double>(document, "max_shift", config.max_shift, source);
  config.base_image_seq_len =
      read_key<int>(document, "base_image_seq_len", config.base_image_seq_len, source);
  config.max_image_seq_len =
      read_key<int>(document, "max_image_seq_len", config.max_image_seq_len, source);
  const std::string shift_type =
      read_key<std::string>(document, "time_shift_type", "exponential", source);
  if (shift_type != "exponential" && shift_type != "linear") {
    throw InvalidInputError(
        fmt::format("{}: time_shift_type \"{}\" is not supported; expected exponential or linear",
                    source, shift_type));
  }
  config.exponential_time_shift = shift_type == "exponential";
  if (document.contains("shift_terminal") && !document["shift_terminal"].is_null()) {
    config.shift_terminal = read_key<double>(document, "shift_terminal", 0.0, source);
  } else {
    config.shift_terminal.reset();
  }
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                          "invert_sigmas", "stochastic_sampling"}) {
    reject_enabled(document, key, source);
  }
  if (config.num_train_timesteps <= 0 || config.max_image_seq_len <= config.base_image_seq_len) {
    throw InvalidInputError(fmt::format(
        "{}: num_train_timesteps must be positive and max_image_seq_len above "
        "base_image_seq_len (got {}, {} and {})",
        source, config.num_train_timesteps, config.max_image_seq_len, config.base_image_seq_len));
  }
  if (config.shift_terminal && (*config.shift_terminal <= 0.0 || *config.shift_terminal >= 1.0)) {
    throw InvalidInputError(fmt::format("{}: shift_terminal must be in (0, 1), got {}", source,
                                        *config.shift_terminal));
  }
  return config;
}

FlowMatchSchedulerConfig FlowMatchSchedulerConfig::from_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    throw InvalidInputError(path.string() + ": cannot open the scheduler configuration");
  }
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& error) {
    throw InvalidInputError(
        fmt::format("{}: invalid JSON at byte {}: {}", path.string(), error.byte, error.what()));
  }
  return from_json(document, path.string());
}

FlowMatchSchedulerConfig FlowMatchSchedulerConfig::lightning() {
  FlowMatchSchedulerConfig config;
  config.use_dynamic_shifting = true;
  config.base_shift = std::log(3.0);
  config.max_shift = std::log(3.0);
  config.exponential_time_shift = true;
  config.shift_terminal.reset();
  return config;
}

FlowMatchEulerScheduler::FlowMatchEulerScheduler(FlowMatchSchedulerConfig config)
    : config_(config) {}

double FlowMatchEulerScheduler::time_shift(double mu, double s) const {
  if (config_.exponential_time_shift) {
    return std::exp(mu) / (std::exp(mu) + (1.0 / s - 1.0));
  }
  return mu / (mu + (1.0 / s - 1.0));
}

void FlowMatchEulerScheduler::set_timesteps(int steps, int image_seq_len,
                                            const std::optional<std::vector<double>>& sigmas) {
  std::vector<double> s;
  if (sigmas) {
    s = *sigmas;
    if (s.empty()) {
      throw InvalidInputError("custom sigma list is empty");
    }
    for (double value : s) {
      if (!(value > 0.0 && value <= 1.0)) {
        throw InvalidInputError(
            fmt::format("custom sigma {} is outside (0, 1]; sigmas must be in (0, 1]", value));
      }
    }
  } else {
    if (steps < 1) {
      throw InvalidInputError(fmt::format("steps must be at least 1, got {}", steps));
    }
    for (int i = 0; i < steps; ++i) {
      // linspace(1, 1/N, N)
      s.push_back(steps == 1 ? 1.0 : 1.0 + (1.0 / steps - 1.0) * i / (steps - 1));
    }
  }

  if (config_.use_dynamic_shifting) {
    const double m = (config_.max_shift - config_.base_shift) /
                     (config_.max_image_seq_len - config_.base_image_seq_len);
    const double b = config_.base_shift - m * config_.base_image_seq_len;
    mu_ = m * image_seq_len + b;
    for (double& value : s) {
      value = time_shift(mu_, value);
    }
  } else {
    mu_ = 0.0;
    for (double& value : s) {
      value = config_.shift * value / (1.0 + (config_.shift - 1.0) * value);
    }
  }

  if (config_.shift_terminal) {
    if (s.back() >= 1.0) {
      // The stretch divides by 1 - (last sigma), which is 0 for a one-step schedule.
      throw InvalidInputError(fmt::format(
          "a schedule with shift_terminal {} needs at least 2 steps (its last sigma is {}); "
          "pass --steps 2 or more",
          *config_.shift_terminal, s.back()));
    }
    const double scale = (1.0 - s.back()) / (1.0 - *config_.shift_terminal);
    for (double& value : s) {
      value = 1.0 - (1.0 - value) / scale;
    }
  }

  timesteps_.clear();
  for (double value : s) {
    timesteps_.push_back(value * config_.num_train_timesteps);
  }
  sigmas_ = s;
  sigmas_.push_back(0.0);
}

Tensor FlowMatchEulerScheduler::step(const Tensor& velocity, int index,
                                     const Tensor& latents) const {
  if (index < 0 || index >= steps()) {
    throw Error(fmt::format("scheduler step {} is outside [0, {})", index, steps()));
  }
  if (velocity.shape() != latents.shape()) {
    throw Error(fmt::format("scheduler step: velocity {} and latents {} differ in shape",
                            velocity.describe(), latents.describe()));
  }
  // diffusers keeps sigmas as f32, so the difference is taken between f32 values.
  const float dt = static_cast<float>(sigmas_[index + 1]) - static_cast<float>(sigmas_[index]);
  Tensor result = Tensor::empty(latents.shape(), latents.dtype());
  if (result.is_dry() || velocity.is_dry() || latents.is_dry()) {
    return result;
  }
  // Small tensors (one latent image), so an element-wise pass through f32 is enough.
  const std::vector<float> x = latents.to_floats();
  const std::vector<float> v = velocity.to_floats();
  std::vector<float> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    out[i] = x[i] + dt * v[i];
  }
  convert_elements(out.data(), DType::f32, result.data(), result.dtype(), out.size());
  return result;
}

}  // namespace ethereal
