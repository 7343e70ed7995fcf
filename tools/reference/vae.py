"""Reference AutoencoderKLQwenImage (Wan-2.1 VAE architecture) for single images.

Semantics follow diffusers `autoencoder_kl_qwenimage.py` for one frame (T = 1) with an
empty feature cache, which is every image encode and decode. Parameter names equal the
diffusers state-dict names, including the `time_conv` weights that a single frame never
uses.

Formulas:
    CausalConv3d(k=3, padding=1): pad W and H by 1 on both sides, T by 2 in front (zeros),
        then a valid Conv3d. With T = 1 only the last temporal kernel slice W[:, :, 2]
        meets data, so the layer equals Conv2d(W[:, :, 2], padding=1) + bias.
    RMS_norm(x) = x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma (no bias).
    ResidualBlock(x) = conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))) + shortcut(x),
        shortcut = 1x1x1 conv when C_in != C_out, else identity.
    AttentionBlock(x) = x + proj(attn(q, k, v)), q|k|v = chunk3(to_qkv(RMS_norm(x))) over
        channels, one head over all H*W positions, softmax scale 1/sqrt(C).
    Downsample: zero pad right 1 and bottom 1, Conv2d 3x3 stride 2 (C -> C).
    Upsample: nearest x2, Conv2d 3x3 padding 1 (C -> C/2).
    encode: mean = first z_dim channels of quant_conv(encoder(x)); decode:
        clamp(decoder(post_quant_conv(z)), -1, 1).
The latents_mean / latents_std normalisation is not part of encode or decode: the
pipeline applies z = (mean - latents_mean) / latents_std after encode and the inverse
before decode (see `normalize_latents`).
"""

import json
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# Per-channel statistics of the Wan-2.1 / Qwen-Image VAE latent space (diffusers defaults).
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


@dataclass
class VaeConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: list = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_scales: list = field(default_factory=list)
    temperal_downsample: list = field(default_factory=lambda: [False, True, True])
    dropout: float = 0.0
    input_channels: int = 3
    latents_mean: list = field(default_factory=lambda: list(LATENTS_MEAN))
    latents_std: list = field(default_factory=lambda: list(LATENTS_STD))

    def to_diffusers_json(self):
        """Return the diffusers `config.json` text for this configuration."""
        config = {"_class_name": "AutoencoderKLQwenImage", "_diffusers_version": "0.36.0"}
        config.update(asdict(self))
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


def normalize_latents(mean, config):
    """Map a posterior mean [B, z, T, h, w] to the transformer's latent space."""
    shape = (1, config.z_dim, 1, 1, 1)
    latents_mean = torch.tensor(config.latents_mean, dtype=mean.dtype).view(shape)
    latents_std = torch.tensor(config.latents_std, dtype=mean.dtype).view(shape)
    return (mean - latents_mean) / latents_std


def denormalize_latents(latents, config):
    """Map transformer-space latents back to VAE space: z * latents_std + latents_mean."""
    shape = (1, config.z_dim, 1, 1, 1)
    latents_mean = torch.tensor(config.latents_mean, dtype=latents.dtype).view(shape)
    latents_std = torch.tensor(config.latents_std, dtype=latents.dtype).view(shape)
    return latents * latents_std + latents_mean


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: 2 * pad_t zero frames in front, none behind."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.causal_padding = (pad_w, pad_w, pad_h, pad_h, 2 * pad_t, 0)

    def forward(self, x):
        return super().forward(F.pad(x, self.causal_padding))


class RMSNorm(nn.Module):
    """L2-normalise over channels (axis 1), times sqrt(C) and gamma."""

    def __init__(self, dim, images=False):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = math.sqrt(dim)
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x):
        shortcut = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)))
        x = self.conv2(F.silu(self.norm2(x)))
        return x + shortcut


class AttentionBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        batch, channels, frames, height, width = x.shape
        identity = x
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        qkv = self.to_qkv(self.norm(x)).flatten(2).transpose(1, 2)  # [BT, HW, 3C]
        query, key, value = qkv.chunk(3, dim=-1)
        weights = torch.softmax(query @ key.transpose(1, 2) / math.sqrt(channels), dim=-1)
        x = (weights @ value).transpose(1, 2).reshape(batch * frames, channels, height, width)
        x = self.proj(x)
        x = x.view(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
        return x + identity


class NearestUpsample2x(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class Resample(nn.Module):
    """Spatial down/upsampling applied per frame; `time_conv` exists but is unused for T = 1."""

    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(NearestUpsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x):
        batch, channels, frames, height, width = x.shape
        if frames != 1:
            raise ValueError(f"the reference VAE handles single frames only, got T = {frames}")
        x = x.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
        x = self.resample(x)
        return x.view(batch, frames, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class MidBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x):
        x = self.resnets[0](x)
        return self.resnets[1](self.attentions[0](x))


class Encoder(nn.Module):
    def __init__(self, config: VaeConfig):
        super().__init__()
        dims = [config.base_dim * multiplier for multiplier in [1] + config.dim_mult]
        self.conv_in = CausalConv3d(config.input_channels, dims[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        scale = 1.0
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                self.down_blocks.append(ResidualBlock(in_dim, out_dim))
                if scale in config.attn_scales:
                    self.down_blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if stage != len(config.dim_mult) - 1:
                mode = "downsample3d" if config.temperal_downsample[stage] else "downsample2d"
                self.down_blocks.append(Resample(out_dim, mode))
                scale /= 2.0
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * config.z_dim, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for layer in self.down_blocks:
            x = layer(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class UpBlock(nn.Module):
    def __init__(self, in_dim, out_dim, num_res_blocks, upsample_mode):
        super().__init__()
        self.resnets = nn.ModuleList()
        for _ in range(num_res_blocks + 1):
            self.resnets.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if upsample_mode is not None:
            self.upsamplers = nn.ModuleList([Resample(out_dim, upsample_mode)])
        else:
            self.upsamplers = None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, config: VaeConfig):
        super().__init__()
        dim_mult = config.dim_mult
        dims = [config.base_dim * multiplier for multiplier in [dim_mult[-1]] + dim_mult[::-1]]
        temperal_upsample = config.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(config.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList()
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if stage > 0:
                in_dim = in_dim // 2  # the previous stage's upsampler halved the channels
            mode = None
            if stage != len(dim_mult) - 1:
                mode = "upsample3d" if temperal_upsample[stage] else "upsample2d"
            self.up_blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, mode))
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3, 3, padding=1)

    def forward(self, x):
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class QwenImageVae(nn.Module):
    def __init__(self, config: VaeConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    def encode_moments(self, image):
        """Return [B, 2*z_dim, 1, H/8, W/8] = [mean | logvar] for image [B, 3, 1, H, W] in [-1, 1]."""
        return self.quant_conv(self.encoder(image))

    def encode(self, image):
        """Return the posterior mean [B, z_dim, 1, H/8, W/8] (what the pipeline uses)."""
        return self.encode_moments(image)[:, : self.config.z_dim]

    def decode(self, latents):
        """Return the image [B, 3, 1, 8h, 8w] in [-1, 1] for VAE-space latents [B, z_dim, 1, h, w]."""
        return torch.clamp(self.decoder(self.post_quant_conv(latents)), -1.0, 1.0)
