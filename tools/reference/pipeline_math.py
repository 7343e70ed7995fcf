"""Reference arithmetic of the Qwen-Image-Edit-Plus pipeline (2509 / 2511).

calculate_dimensions(area, ratio): w = sqrt(area * ratio), h = w / ratio, each rounded to
    the nearest multiple of 32 with Python round (ties to even).
smart_resize(h, w): each side is rounded to the nearest multiple of 28. When the area
    falls outside [min_pixels, max_pixels], both sides are scaled by one factor and
    floored (too large) or ceiled (too small) to multiples of 28. Aspect ratios above 200
    are rejected.
pack: [B, C, h, w] -> [B, (h/2)(w/2), 4C], token row-major, channel index c*4 + dy*2 + dx.
CFG: comb = u + s (c - u); out = comb * ||c|| / ||comb||, norms over the packed channel
    axis of each token, no epsilon.
"""

import math

import torch

VL_AREA = 384 * 384
VAE_AREA = 1024 * 1024
# Qwen-Image processor limits: min 56*56, max 12,845,056 pixels.
# NOTE: these come from a third-party copy of Qwen-Image's preprocessor_config.json.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 12845056


def calculate_dimensions(target_area, ratio):
    """Return (width, height), multiples of 32, for an image of aspect ratio width/height."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return round(width / 32) * 32, round(height / 32) * 32


def smart_resize(height, width, factor=28, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """Return (height, width) multiples of `factor` with area inside [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width)} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def edit_plus_sizes(width, height):
    """Return the pipeline sizes for one input image of width x height.

    vl: calculate_dimensions at 384^2 then smart_resize (the Qwen processor input size);
    vae: calculate_dimensions at 1024^2 (the VAE reference size and, for the last image,
    the default output size, floored to a multiple of 16).
    """
    ratio = width / height
    vl_width, vl_height = calculate_dimensions(VL_AREA, ratio)
    processor_height, processor_width = smart_resize(vl_height, vl_width)
    vae_width, vae_height = calculate_dimensions(VAE_AREA, ratio)
    return {
        "input": [width, height],
        "vl_size": [vl_width, vl_height],
        "processor_size": [processor_width, processor_height],
        "patch_grid": [processor_height // 14, processor_width // 14],
        "image_tokens": (processor_height // 28) * (processor_width // 28),
        "vae_size": [vae_width, vae_height],
        "output_size": [vae_width // 16 * 16, vae_height // 16 * 16],
        "latent_tokens": (vae_height // 16) * (vae_width // 16),
    }


def pack_latents(latents):
    """Pack latents [B, C, h, w] (or [B, C, 1, h, w]) into 2 x 2 patch tokens [B, (h/2)(w/2), 4C]."""
    if latents.dim() == 5:
        latents = latents[:, :, 0]
    batch, channels, height, width = latents.shape
    x = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens, height, width):
    """Unpack tokens [B, (h/2)(w/2), 4C] into latents [B, C, 1, h, w] of height h and width w."""
    batch, _, packed = tokens.shape
    x = tokens.view(batch, height // 2, width // 2, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, packed // 4, 1, height, width)


def cfg_norm_rescale(cond, uncond, scale):
    """Return true-CFG output rescaled per token to the conditional prediction's L2 norm."""
    combined = uncond + scale * (cond - uncond)
    cond_norm = torch.norm(cond, dim=-1, keepdim=True)
    combined_norm = torch.norm(combined, dim=-1, keepdim=True)
    return combined * (cond_norm / combined_norm)
