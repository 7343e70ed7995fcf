"""Tiny seeded configurations of every Qwen-Image-Edit-2511 component used for test vectors.

They keep the real structure (tensor names, block counts per stage, GQA, M-RoPE, window
and full attention in the vision tower, VAE stage layout) at a size that fits in a few
hundred kilobytes each.
"""

from qwen_vl import TextEncoderConfig, VisionConfig
from transformer import TransformerConfig
from vae import VaeConfig

TRANSFORMER = TransformerConfig(
    patch_size=2,
    in_channels=64,  # 16 latent channels x 2 x 2 patch, same as the VAE z_dim below
    out_channels=16,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=24,
    axes_dims_rope=(4, 6, 6),
    zero_cond_t=True,
)

VAE = VaeConfig(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2)

# Special tokens take the top ids of a 640-entry vocabulary, in the real relative order
# (the real ids are 151643..151664). Ids below 618 are free for 256 byte tokens and merges.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
]
VOCAB_SIZE = 640
FIRST_SPECIAL_ID = VOCAB_SIZE - len(SPECIAL_TOKENS)  # 618
SPECIAL_IDS = {token: FIRST_SPECIAL_ID + index for index, token in enumerate(SPECIAL_TOKENS)}

TEXT_ENCODER = TextEncoderConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: two query heads per key/value head
    intermediate_size=48,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    mrope_section=[1, 1, 2],  # sums to head_dim / 2 = 4
    vocab_size=VOCAB_SIZE,
    bos_token_id=SPECIAL_IDS["<|endoftext|>"],
    eos_token_id=SPECIAL_IDS["<|im_end|>"],
    image_token_id=SPECIAL_IDS["<|image_pad|>"],
    video_token_id=SPECIAL_IDS["<|video_pad|>"],
    vision_start_token_id=SPECIAL_IDS["<|vision_start|>"],
    vision_end_token_id=SPECIAL_IDS["<|vision_end|>"],
    vision_token_id=SPECIAL_IDS["<|vision_pad|>"],
    vision=VisionConfig(
        depth=4,
        hidden_size=32,
        intermediate_size=48,
        num_heads=2,  # head_dim 16
        in_chans=3,
        out_hidden_size=32,  # = text hidden_size
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=56,  # 56 / 14 / 2 = 2 x 2 merged tokens per window
        fullatt_block_indexes=[1, 3],
    ),
)
