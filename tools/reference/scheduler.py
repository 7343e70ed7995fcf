"""Reference FlowMatchEulerDiscreteScheduler sigma schedules for the Qwen-Image pipelines.

Computation follows diffusers (pipeline + scheduler), in the same precision:
    s_i   = linspace(1, 1/N, N)                       float64, then cast to float32
    mu    = m * L + b, m = (max_shift - base_shift) / (max_seq - base_seq),
            b = base_shift - m * base_seq             Python float (float64)
    sigma = e^mu / (e^mu + (1/s - 1))                 float32 ("exponential" time shift)
    shift_terminal: z = 1 - sigma, k = z[-1] / (1 - shift_terminal) (float64 scalar),
                  sigma = 1 - z / k (float32)
    timesteps = sigma * 1000 (float32); sigmas get a final 0 appended
    Euler step: x_next = x + (sigma_next - sigma) * v, in float32
"""

import math

import numpy as np

# Qwen-Image / Qwen-Image-Edit scheduler_config.json values.
# NOTE: the Edit-2511 file was not read; these are the Edit and Edit-2509 values.
QWEN_IMAGE_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# Override used with the Lightning LoRA: constant shift 3 (mu = ln 3), no terminal stretch.
LIGHTNING_SCHEDULER = dict(
    QWEN_IMAGE_SCHEDULER, base_shift=math.log(3.0), max_shift=math.log(3.0), shift_terminal=None)


def calculate_mu(image_seq_len, config):
    """Return mu for L = image_seq_len target tokens (linear in L, float64)."""
    slope = (config["max_shift"] - config["base_shift"]) / (
        config["max_image_seq_len"] - config["base_image_seq_len"])
    intercept = config["base_shift"] - slope * config["base_image_seq_len"]
    return image_seq_len * slope + intercept


def sigma_schedule(num_steps, image_seq_len, config=QWEN_IMAGE_SCHEDULER):
    """Return (mu, sigmas float32 [N + 1] ending in 0, timesteps float32 [N])."""
    sigmas = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    mu = calculate_mu(image_seq_len, config)
    # numpy keeps float32 arrays float32 when combined with Python floats, as in diffusers.
    sigmas = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))
    if config["shift_terminal"]:
        one_minus = 1.0 - sigmas
        scale = one_minus[-1] / (1.0 - config["shift_terminal"])  # a float64 scalar
        sigmas = 1.0 - one_minus / scale
    if sigmas.dtype != np.float32:
        raise AssertionError(f"sigma schedule was promoted to {sigmas.dtype}")
    timesteps = (sigmas * np.float32(config["num_train_timesteps"])).astype(np.float32)
    return mu, np.append(sigmas, np.float32(0.0)).astype(np.float32), timesteps


def euler_step(latents, velocity, sigma, sigma_next):
    """Return latents + (sigma_next - sigma) * velocity, computed in float32."""
    return (latents.float() + (sigma_next - sigma) * velocity.float()).to(latents.dtype)
