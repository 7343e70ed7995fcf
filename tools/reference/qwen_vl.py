"""Reference Qwen2.5-VL text encoder (language model + vision tower) in plain torch.

Semantics follow transformers `modeling_qwen2_5_vl.py` and the Qwen2-VL image processor.
Parameter names are the older transformers checkpoint names (`model.layers.*`,
`model.embed_tokens.weight`, `model.norm.weight`, `visual.*`); newer transformers save the
same tensors as `model.language_model.*` and `model.visual.*`. There is no lm_head: only
hidden states are used.

Language model (per layer, RMSNorm eps from the config, no biases except q/k/v):
    h = x + o_proj(attn(M-RoPE(q_proj(n)), M-RoPE(k_proj(n)), v_proj(n))), n = RMSNorm(x)
    out = h + down_proj(SiLU(gate_proj(m)) * up_proj(m)), m = RMSNorm(h)
    Attention is causal, scale 1/sqrt(head_dim); query head i uses key/value head
    i // (heads / kv_heads). The output is RMSNorm(final hidden state) (`model.norm`).
M-RoPE: inv_freq_j = theta^(-2j/head_dim), j < head_dim/2. Each token has (t, h, w)
    positions; angle_j = pos_axis(j) * inv_freq_j where axis(j) = 0 for the first
    mrope_section[0] frequencies, 1 for the next mrope_section[1], 2 for the rest.
    Rotation is rotate-half: dim i pairs with dim i + head_dim/2, both using angle_i.
Vision tower:
    patch_embed: Conv3d without bias = rows [N, 3*2*p*p] (c, t, y, x order) @ W.reshape(D, -1).T
    2D RoPE (rotate-half over head_dim): angles = [row * f (d/4) | col * f (d/4)],
        f_j = 10000^(-2j/(d/2)), duplicated to d.
    window order (see `window_index`), blocks x += attn(RMSNorm(x)); x += MLP(RMSNorm(x)),
        MLP = down(SiLU(gate(x)) * up(x)) with biases; attention inside each window, or
        over each whole image in fullatt_block_indexes; scale 1/sqrt(d).
    merger: RMSNorm(ln_q) per patch, 4 consecutive patches -> one row of 4D, Linear,
        exact GELU, Linear -> out_hidden_size; then undo the window order.
"""

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# CLIP normalisation used by the Qwen2-VL image processor.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_chans: int = 3
    out_hidden_size: int = 3584
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list = field(default_factory=lambda: [7, 15, 23, 31])
    hidden_act: str = "silu"
    tokens_per_second: int = 2


@dataclass
class TextEncoderConfig:
    hidden_size: int = 3584
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    intermediate_size: int = 18944
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: list = field(default_factory=lambda: [16, 24, 24])
    vocab_size: int = 152064
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    vision: VisionConfig = field(default_factory=VisionConfig)

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    def to_transformers_json(self):
        """Return a transformers-style `config.json` (text keys at the top level)."""
        config = asdict(self)
        vision = config.pop("vision")
        mrope_section = config.pop("mrope_section")
        config.update(
            {
                "architectures": ["Qwen2_5_VLForConditionalGeneration"],
                "model_type": "qwen2_5_vl",
                "hidden_act": "silu",
                "attention_dropout": 0.0,
                "max_position_embeddings": 4096,
                "max_window_layers": self.num_hidden_layers,
                "use_sliding_window": False,
                "sliding_window": 4096,
                "tie_word_embeddings": False,
                "torch_dtype": "float32",
                "rope_scaling": {"type": "mrope", "mrope_section": mrope_section},
                "vision_config": dict(vision, model_type="qwen2_5_vl"),
            }
        )
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


class RMSNorm(nn.Module):
    """weight * x * rsqrt(mean(x^2, last axis) + eps)."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotate_half_rope(x, cos, sin):
    """Rotate x [S, H, d] by cos/sin [S, d]: x * cos + rotate_half(x) * sin."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def attention(query, key, value, mask):
    """Compute softmax attention of query [Sq, H, d] over key/value [Sk, H, d].

    mask [Sq, Sk] is True where a query may attend to a key.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.einsum("qhd,khd->hqk", query, key) * scale
    scores = scores.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), value)


# ----------------------------------------------------------------------------------------
# Processor and position bookkeeping


def processor_pixel_values(image_uint8, config: VisionConfig):
    """Convert an RGB uint8 image [H, W, 3] to processor rows [N, 3*T*p*p] and grid (1, gh, gw).

    Rescale by 1/255 (in float64, then float32) and normalise with the CLIP mean and std
    in float32, as the Qwen2-VL image processor does. H and W must already be multiples of
    patch_size * spatial_merge_size (the processor's smart_resize output); the still image
    is repeated to temporal_patch_size frames. Row order is (t, row block, col block,
    merge row, merge col); each row is ordered (channel, frame, y, x).
    """
    patch, merge, frames = config.patch_size, config.spatial_merge_size, config.temporal_patch_size
    height, width, _ = image_uint8.shape
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(f"image {height}x{width} is not a multiple of {patch * merge}; "
                         "resize it to the smart_resize output first")
    image = (image_uint8.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
    mean = np.array(IMAGE_MEAN, dtype=np.float32)
    std = np.array(IMAGE_STD, dtype=np.float32)
    image = ((image - mean) / std).transpose(2, 0, 1)  # [3, H, W]
    video = np.repeat(image[None], frames, axis=0)  # [T, 3, H, W]
    grid_h, grid_w = height // patch, width // patch
    patches = video.reshape(1, frames, 3, grid_h // merge, merge, patch, grid_w // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = patches.reshape(grid_h * grid_w, 3 * frames * patch * patch)
    return torch.from_numpy(np.ascontiguousarray(rows)), (1, grid_h, grid_w)


def window_index(grid_thw, config: VisionConfig):
    """Return (window_index [N_merged] int64, cu_window_seqlens list of patch offsets).

    Per image, the merged grid (gh/2, gw/2) is padded at the bottom and right by
    w - (n % w) entries per axis (w = window_size / merge / patch merged tokens), which adds
    a whole empty window when n is already a multiple of w. Windows are enumerated
    row-major, merged tokens row-major inside each window; padding entries are dropped.
    cu_window_seqlens counts patches (4 per merged token) and may repeat a value for an
    empty window; callers drop repeats.
    """
    merge = config.spatial_merge_size
    window = config.window_size // merge // config.patch_size
    indexes, cu_seqlens, offset = [], [0], 0
    for frames, grid_h, grid_w in grid_thw:
        merged_h, merged_w = grid_h // merge, grid_w // merge
        index = torch.arange(frames * merged_h * merged_w).reshape(frames, merged_h, merged_w)
        pad_h = window - merged_h % window
        pad_w = window - merged_w % window
        windows_h, windows_w = (merged_h + pad_h) // window, (merged_w + pad_w) // window
        padded = F.pad(index, (0, pad_w, 0, pad_h), value=-100)
        padded = padded.reshape(frames, windows_h, window, windows_w, window).permute(0, 1, 3, 2, 4)
        padded = padded.reshape(frames, windows_h * windows_w, window * window)
        seqlens = (padded != -100).sum(-1).reshape(-1)
        flat = padded.reshape(-1)
        indexes.append(flat[flat != -100] + offset)
        image_start = cu_seqlens[-1]
        for count in torch.cumsum(seqlens, 0).tolist():
            cu_seqlens.append(image_start + count * merge * merge)
        offset += frames * merged_h * merged_w
    return torch.cat(indexes), cu_seqlens


def vision_rope_positions(grid_thw, merge):
    """Return int64 [N, 2] (row, col) patch positions in processor row order."""
    positions = []
    for frames, grid_h, grid_w in grid_thw:
        rows = torch.arange(grid_h)[:, None].expand(grid_h, grid_w)
        cols = torch.arange(grid_w)[None, :].expand(grid_h, grid_w)

        def merge_order(grid):
            grid = grid.reshape(grid_h // merge, merge, grid_w // merge, merge)
            return grid.permute(0, 2, 1, 3).flatten()

        pair = torch.stack([merge_order(rows), merge_order(cols)], dim=-1)
        positions.append(pair.repeat(frames, 1))
    return torch.cat(positions)


def rope_index(input_ids, image_grid_thw, config: TextEncoderConfig):
    """Return int64 [3, S] M-RoPE positions for one unpadded sequence of still images.

    Text tokens get t = h = w = running index. The k-th image span (the image_token_id run
    after each vision_start token) with merged grid (1, gh/2, gw/2) gives its token at
    merged row r, col c the positions (s, s + r, s + c), s = the next text index; the
    token after the span continues at max(previous positions) + 1.
    """
    merge = config.vision.spatial_merge_size
    tokens = input_ids.tolist()
    pieces, start, image = [], 0, 0

    def next_index():
        return int(pieces[-1].max()) + 1 if pieces else 0

    while image < len(image_grid_thw):
        span_start = tokens.index(config.image_token_id, start)
        frames, grid_h, grid_w = (int(v) for v in image_grid_thw[image])
        merged_h, merged_w = grid_h // merge, grid_w // merge
        text_length = span_start - start
        base = next_index()
        pieces.append(torch.arange(text_length).expand(3, -1) + base)
        # Still images: seconds per temporal grid = 0, so the t index is 0 for every token.
        t_index = torch.zeros(frames * merged_h * merged_w, dtype=torch.int64)
        h_index = torch.arange(merged_h).view(1, -1, 1).expand(frames, -1, merged_w).flatten()
        w_index = torch.arange(merged_w).view(1, 1, -1).expand(frames, merged_h, -1).flatten()
        pieces.append(torch.stack([t_index, h_index, w_index]) + text_length + base)
        start = span_start + frames * merged_h * merged_w
        image += 1
    if start < len(tokens):
        base = next_index()
        pieces.append(torch.arange(len(tokens) - start).expand(3, -1) + base)
    return torch.cat(pieces, dim=1).to(torch.int64)


def mrope_cos_sin(position_ids, config: TextEncoderConfig, dtype):
    """Return (cos, sin) [S, head_dim] for position_ids [3, S] (M-RoPE, rotate-half layout)."""
    head_dim = config.head_dim
    if sum(config.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {config.mrope_section} must sum to head_dim / 2 = {head_dim // 2}")
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    freqs = position_ids.to(dtype)[:, :, None] * inv_freq[None, None, :]  # [3, S, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [3, S, d]
    chunks = emb.split(list(config.mrope_section) * 2, dim=-1)
    angles = torch.cat([chunk[index % 3] for index, chunk in enumerate(chunks)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


# ----------------------------------------------------------------------------------------
# Language model


class TextAttention(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask):
        length = x.shape[0]
        query = apply_rotate_half_rope(self.q_proj(x).view(length, self.heads, -1), cos, sin)
        key = apply_rotate_half_rope(self.k_proj(x).view(length, self.kv_heads, -1), cos, sin)
        value = self.v_proj(x).view(length, self.kv_heads, -1)
        group = self.heads // self.kv_heads
        key = key.repeat_interleave(group, dim=1)  # query head i reads kv head i // group
        value = value.repeat_interleave(group, dim=1)
        return self.o_proj(attention(query, key, value, mask).reshape(length, -1))


class SwiGlu(nn.Module):
    """down_proj(SiLU(gate_proj(x)) * up_proj(x))."""

    def __init__(self, dim, hidden, bias):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = TextAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGlu(config.hidden_size, config.intermediate_size, bias=False)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class TextModel(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def embed(self, input_ids, image_embeds):
        """Embed input_ids [S] and overwrite the image_token_id rows with image_embeds in order."""
        x = self.embed_tokens(input_ids)
        image_rows = input_ids == self.config.image_token_id
        if int(image_rows.sum()) != image_embeds.shape[0]:
            raise ValueError(
                f"{int(image_rows.sum())} image tokens in input_ids but "
                f"{image_embeds.shape[0]} image embeddings")
        x = x.clone()
        x[image_rows] = image_embeds.to(x.dtype)
        return x

    def forward(self, inputs_embeds, position_ids, trace=None):
        """Return the final-norm hidden state [S, hidden] for one causal sequence."""
        trace = trace if trace is not None else {}
        length = inputs_embeds.shape[0]
        cos, sin = mrope_cos_sin(position_ids, self.config, inputs_embeds.dtype)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        x = inputs_embeds
        for index, layer in enumerate(self.layers):
            x = layer(x, cos, sin, causal)
            trace[f"layer{index}"] = x
        return self.norm(x)


# ----------------------------------------------------------------------------------------
# Vision tower


class PatchEmbed(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.shape = (config.in_chans, *kernel)
        self.proj = nn.Conv3d(config.in_chans, config.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, rows):
        return self.proj(rows.view(-1, *self.shape)).flatten(1)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, cos, sin, mask):
        length = x.shape[0]
        query, key, value = self.qkv(x).view(length, 3, self.heads, -1).unbind(1)
        query = apply_rotate_half_rope(query, cos, sin)
        key = apply_rotate_half_rope(key, cos, sin)
        return self.proj(attention(query, key, value, mask).reshape(length, -1))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, 1e-6)
        self.norm2 = RMSNorm(config.hidden_size, 1e-6)
        self.attn = VisionAttention(config)
        self.mlp = SwiGlu(config.hidden_size, config.intermediate_size, bias=True)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.merged_dim = config.hidden_size * config.spatial_merge_size ** 2
        self.ln_q = RMSNorm(config.hidden_size, 1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim),
            nn.GELU(),
            nn.Linear(self.merged_dim, config.out_hidden_size),
        )

    def forward(self, x):
        return self.mlp(self.ln_q(x).view(-1, self.merged_dim))


def segment_mask(cu_seqlens, length):
    """Return [length, length] bool, True where both positions fall in the same segment."""
    segment = torch.zeros(length, dtype=torch.int64)
    for boundary in cu_seqlens[1:-1]:
        segment[boundary:] += 1
    return segment[:, None] == segment[None, :]


class VisionModel(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList([VisionBlock(config) for _ in range(config.depth)])
        self.merger = PatchMerger(config)

    def rope_angles(self, grid_thw, dtype):
        """Return [N, head_dim/2] angles [row * f | col * f] in processor row order."""
        head_dim = self.config.hidden_size // self.config.num_heads
        rotary_dim = head_dim // 2
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=dtype) / rotary_dim))
        positions = vision_rope_positions(grid_thw, self.config.spatial_merge_size).to(dtype)
        return torch.cat([positions[:, :1] * inv_freq, positions[:, 1:] * inv_freq], dim=-1)

    def forward(self, pixel_values, grid_thw, trace=None):
        """Return [N / merge^2, out_hidden_size] for processor rows of all images, in image order."""
        trace = trace if trace is not None else {}
        unit = self.config.spatial_merge_size ** 2
        x = self.patch_embed(pixel_values)
        length, hidden = x.shape
        trace["patch_embed"] = x

        order, cu_window = window_index(grid_thw, self.config)
        cu_window = sorted(set(cu_window))  # drop the repeats that empty windows produce
        cu_full = [0]
        for frames, grid_h, grid_w in grid_thw:
            for _ in range(frames):
                cu_full.append(cu_full[-1] + grid_h * grid_w)
        trace["window_index"] = order
        trace["cu_window_seqlens"] = torch.tensor(cu_window, dtype=torch.int64)
        trace["cu_seqlens"] = torch.tensor(cu_full, dtype=torch.int64)

        x = x.view(length // unit, unit, hidden)[order].reshape(length, hidden)
        angles = self.rope_angles(grid_thw, x.dtype)
        angles = angles.view(length // unit, unit, -1)[order].reshape(length, -1)
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = torch.cos(emb), torch.sin(emb)

        window_mask = segment_mask(cu_window, length)
        full_mask = segment_mask(cu_full, length)
        for index, block in enumerate(self.blocks):
            mask = full_mask if index in self.config.fullatt_block_indexes else window_mask
            x = block(x, cos, sin, mask)
        trace["blocks_out"] = x
        merged = self.merger(x)
        return merged[torch.argsort(order)]


class Qwen25VL(nn.Module):
    """Qwen2_5_VLForConditionalGeneration without lm_head: `model` (text) and `visual`."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.model = TextModel(config)
        self.visual = VisionModel(config.vision)

    def forward(self, input_ids, pixel_values, image_grid_thw, trace=None):
        """Return the last hidden state (after `model.norm`) [S, hidden] for input_ids [S]."""
        trace = trace if trace is not None else {}
        grid = [tuple(int(v) for v in row) for row in image_grid_thw]
        image_embeds = self.visual(pixel_values, grid)
        position_ids = rope_index(input_ids, grid, self.config)
        inputs_embeds = self.model.embed(input_ids, image_embeds)
        trace["image_embeds"] = image_embeds
        trace["position_ids"] = position_ids
        trace["inputs_embeds"] = inputs_embeds
        return self.model(inputs_embeds, position_ids, trace)
