"""Reference QwenImageTransformer2DModel (the Qwen-Image MMDiT), written in plain torch.

Semantics follow diffusers `transformer_qwenimage.py` (2025-12, with the Edit-2511
`zero_cond_t` path). Parameter names equal the diffusers state-dict names, so
`model.state_dict()` is a valid `diffusion_pytorch_model.safetensors` for this config.

Formulas (D = heads * head_dim, all LayerNorms have no affine parameters, eps 1e-6):

    x    = img_in(hidden_states)                                 [B, S_img, D]
    c    = txt_in(RMSNorm_txt(encoder_hidden_states))            [B, S_txt, D]
    temb = linear_2(SiLU(linear_1(sinusoid(t))))                 [B or 2B, D]
        sinusoid(t) = [cos(a_0..a_127), sin(a_0..a_127)], a_k = 1000 * (t * f_k),
        f_k = exp(-ln(10000) * k / 128)
    zero_cond_t: temb rows are [temb(t), temb(0)]; image tokens of the target (the first
        prod(img_shapes[0]) tokens) use the t rows, reference tokens the t=0 rows, for the
        shift, scale and gate of both sub-layers. The text stream and norm_out use t only.
    block:
        (shift1, scale1, gate1, shift2, scale2, gate2) = chunk6(Linear(SiLU(temb)))
        m    = LN(x) * (1 + scale1) + shift1    (same for c with txt_mod)
        q, k, v per stream; q, k <- RMSNorm over head_dim (learned weight); RoPE on q, k
        joint attention over [text tokens, image tokens], softmax scale 1/sqrt(head_dim),
        optional key mask [text mask, ones]; split back; to_out.0 / to_add_out
        x += gate1 * attn_img;  c += gate1_txt * attn_txt
        x += gate2 * MLP(LN(x) * (1 + scale2) + shift2), MLP = Linear, GELU(tanh), Linear
    out  = proj_out(LN(x) * (1 + scale) + shift), (scale, shift) = chunk2(norm_out.linear(SiLU(temb)))
        note the order: norm_out is (scale, shift), blocks are (shift, scale, gate).

RoPE: adjacent pairs (x[2i], x[2i+1]) rotate by angle pos * w_i, w_i = 10000^(-2i/dim_axis);
the head's dim/2 pairs are [frame | height | width] with dim_axis/2 pairs each.
"""

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ROPE_THETA = 10000.0
TIMESTEP_CHANNELS = 256
NORM_EPS = 1e-6


@dataclass
class TransformerConfig:
    patch_size: int = 2
    in_channels: int = 64
    out_channels: int = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584
    axes_dims_rope: tuple = (16, 56, 56)
    zero_cond_t: bool = False

    @property
    def inner_dim(self):
        return self.num_attention_heads * self.attention_head_dim

    def to_diffusers_json(self):
        """Return the diffusers `config.json` text for this configuration."""
        config = {"_class_name": "QwenImageTransformer2DModel", "_diffusers_version": "0.36.0"}
        config.update(asdict(self))
        config["axes_dims_rope"] = list(self.axes_dims_rope)
        config["guidance_embeds"] = False
        config["use_additional_t_cond"] = False
        config["use_layer3d_rope"] = False
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2, last axis) + eps) * weight."""

    def __init__(self, dim, eps=NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.eps) * self.weight


def layer_norm(x):
    """LayerNorm over the last axis without affine parameters, eps 1e-6."""
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


def timestep_sinusoid(timestep, channels=TIMESTEP_CHANNELS):
    """Return [B, channels] = [cos(a), sin(a)], a_k = 1000 * (t * exp(-ln(10000) k / half))."""
    half = channels // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=timestep.dtype) / half
    angles = timestep[:, None] * torch.exp(exponent)[None, :]
    angles = 1000.0 * angles
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def centred_positions(count):
    """Return the scale_rope positions of `count` rows: [-(count - count//2) .. count//2 - 1]."""
    return torch.arange(count, dtype=torch.int64) - (count - count // 2)


def image_rope_positions(img_shapes):
    """Return int64 [S_img, 3] (frame, row, col) positions for every image token.

    Image i of img_shapes gets frame index i (0 = noisy target, 1.. = references); rows and
    columns are centred; tokens are row-major within each image, images in list order.
    """
    positions = []
    for index, (frames, height, width) in enumerate(img_shapes):
        frame = torch.arange(index, index + frames, dtype=torch.int64)
        grid = torch.stack(
            torch.meshgrid(frame, centred_positions(height), centred_positions(width), indexing="ij"),
            dim=-1,
        )
        positions.append(grid.reshape(-1, 3))
    return torch.cat(positions, dim=0)


def text_rope_start(img_shapes):
    """Return the first text position: max over all images of max(h // 2, w // 2)."""
    return max(max(height // 2, width // 2) for _, height, width in img_shapes)


def rope_angles(positions, axes_dims, dtype):
    """Return [S, head_dim/2] angles from [S, 3] positions: axis a uses pos_a * w_{a,i}."""
    parts = []
    for axis, dim in enumerate(axes_dims):
        inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, dim, 2, dtype=dtype) / dim)
        parts.append(positions[:, axis : axis + 1].to(dtype) * inv_freq[None, :])
    return torch.cat(parts, dim=-1)


def apply_rope_adjacent_pairs(x, angles):
    """Rotate adjacent pairs of x [B, S, H, d] by angles [S, d/2] (complex multiply)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    cos = torch.cos(angles)[None, :, None, :]
    sin = torch.sin(angles)[None, :, None, :]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2)


def attention(query, key, value, key_mask=None):
    """Compute softmax attention on [B, S, H, d]; key_mask [B, S_k] is True for keys that may be attended."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", query, key) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, value)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear_1 = nn.Linear(TIMESTEP_CHANNELS, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, sinusoid):
        return self.linear_2(F.silu(self.linear_1(sinusoid)))


class TimeTextEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim)

    def forward(self, timestep):
        return self.timestep_embedder(timestep_sinusoid(timestep))


class GeluProjection(nn.Module):
    """Linear followed by tanh-approximated GELU (diffusers `GELU(approximate="tanh")`)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """net.0 = GELU-tanh projection to 4*dim, net.1 = dropout (identity), net.2 = Linear."""

    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([GeluProjection(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class JointAttention(nn.Module):
    """Joint text+image attention with per-stream projections and QK RMSNorm."""

    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.add_q_proj = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim)
        self.norm_k = RMSNorm(head_dim)
        self.norm_added_q = RMSNorm(head_dim)
        self.norm_added_k = RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])
        self.to_add_out = nn.Linear(dim, dim)

    def _heads(self, x):
        return x.unflatten(-1, (self.heads, -1))

    def forward(self, img, txt, img_angles, txt_angles, key_mask):
        img_q = apply_rope_adjacent_pairs(self.norm_q(self._heads(self.to_q(img))), img_angles)
        img_k = apply_rope_adjacent_pairs(self.norm_k(self._heads(self.to_k(img))), img_angles)
        img_v = self._heads(self.to_v(img))
        txt_q = apply_rope_adjacent_pairs(self.norm_added_q(self._heads(self.add_q_proj(txt))), txt_angles)
        txt_k = apply_rope_adjacent_pairs(self.norm_added_k(self._heads(self.add_k_proj(txt))), txt_angles)
        txt_v = self._heads(self.add_v_proj(txt))

        # Text first, then image, along the sequence axis.
        joint = attention(
            torch.cat([txt_q, img_q], dim=1),
            torch.cat([txt_k, img_k], dim=1),
            torch.cat([txt_v, img_v], dim=1),
            key_mask,
        ).flatten(2)
        text_length = txt.shape[1]
        img_out = self.to_out[0](joint[:, text_length:])
        txt_out = self.to_add_out(joint[:, :text_length])
        return img_out, txt_out


def select_modulation(params, modulate_index):
    """Split [rows, 3D] params into (shift, scale, gate), each [B, S or 1, D].

    Without modulate_index every token uses row b. With it, params has 2B rows and token s
    of batch b uses row b when modulate_index[b, s] == 0, else row B + b.
    """
    shift, scale, gate = params.chunk(3, dim=-1)
    if modulate_index is None:
        return shift[:, None], scale[:, None], gate[:, None]
    batch = params.shape[0] // 2
    use_first = (modulate_index == 0)[..., None]
    pick = lambda p: torch.where(use_first, p[:batch, None], p[batch:, None])  # noqa: E731
    return pick(shift), pick(scale), pick(gate)


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = JointAttention(dim, heads, head_dim)
        self.img_mlp = FeedForward(dim)
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mlp = FeedForward(dim)

    def forward(self, img, txt, temb, img_angles, txt_angles, key_mask, modulate_index):
        img_params = self.img_mod(temb)  # [B or 2B, 6D]
        txt_temb = temb[: txt.shape[0]]  # zero_cond_t: the text stream uses the t rows only
        txt_params = self.txt_mod(txt_temb)
        img_mod1, img_mod2 = img_params.chunk(2, dim=-1)
        txt_mod1, txt_mod2 = txt_params.chunk(2, dim=-1)

        shift, scale, img_gate1 = select_modulation(img_mod1, modulate_index)
        img_modulated = layer_norm(img) * (1 + scale) + shift
        shift, scale, txt_gate1 = select_modulation(txt_mod1, None)
        txt_modulated = layer_norm(txt) * (1 + scale) + shift

        img_attn, txt_attn = self.attn(img_modulated, txt_modulated, img_angles, txt_angles, key_mask)
        img = img + img_gate1 * img_attn
        txt = txt + txt_gate1 * txt_attn

        shift, scale, gate = select_modulation(img_mod2, modulate_index)
        img = img + gate * self.img_mlp(layer_norm(img) * (1 + scale) + shift)
        shift, scale, gate = select_modulation(txt_mod2, None)
        txt = txt + gate * self.txt_mlp(layer_norm(txt) * (1 + scale) + shift)
        return img, txt


class AdaLayerNormContinuous(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x, temb):
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return layer_norm(x) * (1 + scale[:, None]) + shift[:, None]


class QwenImageTransformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        if sum(config.axes_dims_rope) != config.attention_head_dim:
            raise ValueError(f"axes_dims_rope {config.axes_dims_rope} must sum to attention_head_dim")
        if any(dim % 2 for dim in config.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {config.axes_dims_rope} must all be even")
        self.config = config
        self.zero_cond_t = config.zero_cond_t
        dim = config.inner_dim
        self.time_text_embed = TimeTextEmbed(dim)
        self.txt_norm = RMSNorm(config.joint_attention_dim)
        self.img_in = nn.Linear(config.in_channels, dim)
        self.txt_in = nn.Linear(config.joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [
                TransformerBlock(dim, config.num_attention_heads, config.attention_head_dim)
                for _ in range(config.num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim)
        patch_area = config.patch_size * config.patch_size
        self.proj_out = nn.Linear(dim, patch_area * config.out_channels)

    def forward(self, hidden_states, encoder_hidden_states, timestep, img_shapes,
                encoder_hidden_states_mask=None, trace=None):
        """Return the velocity [B, S_img, patch^2 * out_channels] for every image token.

        hidden_states [B, S_img, in_channels] (target tokens first, then references),
        encoder_hidden_states [B, S_txt, joint_attention_dim], timestep [B] (sigma in [0, 1]),
        img_shapes: list of (frames, h_patches, w_patches), shared by the batch,
        encoder_hidden_states_mask [B, S_txt] (1 = valid) or None.
        Text RoPE positions run over all S_txt tokens whatever the mask; the mask only
        removes masked text tokens as attention keys.
        `trace`, when a dict, receives intermediate tensors by name.
        """
        trace = trace if trace is not None else {}
        dtype = hidden_states.dtype
        batch, image_tokens = hidden_states.shape[:2]
        expected_tokens = sum(f * h * w for f, h, w in img_shapes)
        if image_tokens != expected_tokens:
            raise ValueError(f"hidden_states has {image_tokens} tokens, img_shapes imply {expected_tokens}")

        img = self.img_in(hidden_states)
        timestep = timestep.to(dtype)
        modulate_index = None
        if self.zero_cond_t:
            timestep = torch.cat([timestep, timestep * 0])
            target_tokens = img_shapes[0][0] * img_shapes[0][1] * img_shapes[0][2]
            modulate_index = (torch.arange(image_tokens) >= target_tokens).to(torch.int64)
            modulate_index = modulate_index[None].expand(batch, -1)
        txt = self.txt_in(self.txt_norm(encoder_hidden_states))
        temb = self.time_text_embed(timestep)

        img_positions = image_rope_positions(img_shapes)
        text_start = text_rope_start(img_shapes)
        text_positions = torch.arange(encoder_hidden_states.shape[1], dtype=torch.int64) + text_start
        img_angles = rope_angles(img_positions, self.config.axes_dims_rope, dtype)
        txt_angles = rope_angles(text_positions[:, None].expand(-1, 3), self.config.axes_dims_rope, dtype)

        key_mask = None
        if encoder_hidden_states_mask is not None:
            image_mask = torch.ones(batch, image_tokens, dtype=torch.bool)
            key_mask = torch.cat([encoder_hidden_states_mask.to(torch.bool), image_mask], dim=1)

        trace["temb"] = temb
        trace["img_rope_positions"] = img_positions
        trace["txt_rope_positions"] = text_positions
        trace["img_in"] = img
        trace["txt_in"] = txt
        for index, block in enumerate(self.transformer_blocks):
            img, txt = block(img, txt, temb, img_angles, txt_angles, key_mask, modulate_index)
            trace[f"block{index}.img"] = img
            trace[f"block{index}.txt"] = txt

        img = self.norm_out(img, temb[:batch])
        return self.proj_out(img)
