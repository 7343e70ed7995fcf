#!/usr/bin/python3
"""Self-checks of the reference implementation and of the committed test vectors.

Run: /usr/bin/python3 -B -m unittest discover -s tools/reference -p 'test_*.py'
"""

import json
import math
import os
import struct
import sys
import tempfile
import unittest

import numpy as np
import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import make_test_vectors  # noqa: E402
import pipeline_math  # noqa: E402
import scheduler  # noqa: E402
import tiny_configs  # noqa: E402
import transformer as dit  # noqa: E402
from qwen_vl import (Qwen25VL, mrope_cos_sin, processor_pixel_values, rope_index,  # noqa: E402
                     window_index)
from safetensors_io import read_safetensors, write_safetensors  # noqa: E402
from vae import CausalConv3d, QwenImageVae  # noqa: E402

torch.set_num_threads(1)


class SafetensorsTest(unittest.TestCase):
    def test_round_trip_every_dtype(self):
        tensors = {
            "f32": torch.randn(3, 5),
            "f64": torch.randn(2),
            "f16": torch.randn(7).half(),
            "bf16": torch.randn(3, 3).bfloat16(),
            "i64": torch.arange(-3, 4),
            "i32": torch.arange(5, dtype=torch.int32),
            "u8": torch.arange(250, 256, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 4),
        }
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "t.safetensors")
            write_safetensors(path, tensors, {"key": "value"})
            loaded, metadata = read_safetensors(path)
            with open(path, "rb") as file:
                (header_length,) = struct.unpack("<Q", file.read(8))
                header = json.loads(file.read(header_length))
        self.assertEqual(metadata, {"key": "value"})
        self.assertEqual(header_length % 8, 0)
        self.assertEqual(header["bf16"]["dtype"], "BF16")
        for name, tensor in tensors.items():
            self.assertEqual(loaded[name].dtype, tensor.dtype, name)
            self.assertEqual(loaded[name].shape, tensor.shape, name)
            self.assertTrue(torch.equal(loaded[name], tensor), name)

    def test_offsets_are_aligned_to_element_size(self):
        tensors = {"a_byte": torch.zeros(3, dtype=torch.uint8), "b_half": torch.zeros(3).half(),
                   "c_float": torch.zeros(3), "d_long": torch.zeros(1, dtype=torch.int64)}
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "t.safetensors")
            write_safetensors(path, tensors)
            with open(path, "rb") as file:
                (header_length,) = struct.unpack("<Q", file.read(8))
                header = json.loads(file.read(header_length))
        for name, size in [("b_half", 2), ("c_float", 4), ("d_long", 8)]:
            self.assertEqual(header[name]["data_offsets"][0] % size, 0, name)

    def test_truncated_data_is_rejected(self):
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "t.safetensors")
            write_safetensors(path, {"weight": torch.zeros(4, 4)})
            with open(path, "rb") as file:
                content = file.read()
            with open(path, "wb") as file:
                file.write(content[:-4])
            with self.assertRaisesRegex(ValueError, "tensor 'weight' offsets"):
                read_safetensors(path)


class TransformerTest(unittest.TestCase):
    def setUp(self):
        self.config = tiny_configs.TRANSFORMER
        self.model = dit.QwenImageTransformer(self.config).eval()
        make_test_vectors.seeded_init(self.model, seed=7)
        generator = torch.Generator().manual_seed(8)
        self.image = torch.randn((1, 15, 64), generator=generator)
        self.text = torch.randn((1, 6, 24), generator=generator)

    def test_centred_positions_put_extra_row_on_negative_side(self):
        self.assertEqual(dit.centred_positions(3).tolist(), [-2, -1, 0])
        self.assertEqual(dit.centred_positions(4).tolist(), [-2, -1, 0, 1])
        self.assertEqual(dit.centred_positions(1).tolist(), [-1])

    def test_text_start_is_max_over_all_images(self):
        self.assertEqual(dit.text_rope_start([(1, 3, 5), (1, 5, 3)]), 2)
        self.assertEqual(dit.text_rope_start([(1, 3, 5), (1, 7, 4)]), 3)
        self.assertEqual(dit.text_rope_start([(1, 64, 64)]), 32)

    def test_sinusoid_of_zero_is_cos_ones_then_sin_zeros(self):
        sinusoid = dit.timestep_sinusoid(torch.zeros(1))
        self.assertTrue(torch.equal(sinusoid[0, :128], torch.ones(128)))
        self.assertTrue(torch.equal(sinusoid[0, 128:], torch.zeros(128)))

    def test_adjacent_pair_rope_matches_complex_product(self):
        x = torch.randn(1, 5, 2, 16)
        angles = torch.randn(5, 8)
        rotation = torch.polar(torch.ones_like(angles), angles)[None, :, None]
        expected = torch.view_as_real(torch.view_as_complex(x.reshape(1, 5, 2, 8, 2)) * rotation).flatten(3)
        self.assertTrue(torch.allclose(dit.apply_rope_adjacent_pairs(x, angles), expected, atol=1e-6))

    def test_zero_cond_without_references_equals_flag_off(self):
        with torch.no_grad():
            self.model.zero_cond_t = True
            with_flag = self.model(self.image, self.text, torch.tensor([0.6]), [(1, 3, 5)])
            self.model.zero_cond_t = False
            without_flag = self.model(self.image, self.text, torch.tensor([0.6]), [(1, 3, 5)])
        self.assertTrue(torch.allclose(with_flag, without_flag, atol=1e-6))

    def test_masked_trailing_text_equals_shorter_text(self):
        image = torch.cat([self.image, self.image.flip(1)], dim=1)
        shapes = [(1, 3, 5), (1, 5, 3)]
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
        with torch.no_grad():
            masked = self.model(image, self.text, torch.tensor([0.3]), shapes,
                                encoder_hidden_states_mask=mask)
            shorter = self.model(image, self.text[:, :4], torch.tensor([0.3]), shapes)
        self.assertTrue(torch.allclose(masked, shorter, atol=1e-5))

    def test_token_count_mismatch_is_rejected(self):
        with self.assertRaisesRegex(ValueError, "img_shapes imply 16"):
            self.model(self.image, self.text, torch.tensor([0.5]), [(1, 4, 4)])

    def test_tensor_names_match_diffusers_layout(self):
        names = set(self.model.state_dict())
        self.assertEqual(len(names), 13 + 32 * self.config.num_layers)
        for name in ["transformer_blocks.1.attn.to_out.0.weight",
                     "transformer_blocks.0.img_mlp.net.0.proj.bias",
                     "transformer_blocks.0.img_mod.1.weight", "norm_out.linear.weight", "txt_norm.weight",
                     "time_text_embed.timestep_embedder.linear_2.bias"]:
            self.assertIn(name, names)


class VaeTest(unittest.TestCase):
    def test_causal_conv_on_one_frame_uses_last_kernel_slice(self):
        conv = CausalConv3d(3, 5, 3, padding=1)
        x = torch.randn(1, 3, 1, 6, 7)
        expected = F.conv2d(x[:, :, 0], conv.weight[:, :, 2], conv.bias, padding=1)
        self.assertTrue(torch.allclose(conv(x)[:, :, 0], expected, atol=1e-5))

    def test_tensor_layout_matches_real_checkpoint(self):
        model = QwenImageVae(tiny_configs.VAE)
        shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
        self.assertEqual(len(shapes), 194)  # same tensor count as the real 2-res-block VAE
        base = tiny_configs.VAE.base_dim
        expected = {
            "encoder.conv_in.weight": [base, 3, 3, 3, 3],
            "encoder.down_blocks.2.resample.1.weight": [base, base, 3, 3],
            "encoder.down_blocks.3.conv_shortcut.weight": [2 * base, base, 1, 1, 1],
            "encoder.down_blocks.5.time_conv.weight": [2 * base, 2 * base, 3, 1, 1],
            "encoder.mid_block.attentions.0.norm.gamma": [4 * base, 1, 1],
            "encoder.mid_block.attentions.0.to_qkv.weight": [12 * base, 4 * base, 1, 1],
            "encoder.norm_out.gamma": [4 * base, 1, 1, 1],
            "encoder.conv_out.weight": [32, 4 * base, 3, 3, 3],
            "quant_conv.weight": [32, 32, 1, 1, 1],
            "post_quant_conv.weight": [16, 16, 1, 1, 1],
            "decoder.conv_in.weight": [4 * base, 16, 3, 3, 3],
            "decoder.up_blocks.0.upsamplers.0.resample.1.weight": [2 * base, 4 * base, 3, 3],
            "decoder.up_blocks.0.upsamplers.0.time_conv.weight": [8 * base, 4 * base, 3, 1, 1],
            "decoder.up_blocks.1.resnets.0.conv_shortcut.weight": [4 * base, 2 * base, 1, 1, 1],
            "decoder.up_blocks.2.upsamplers.0.resample.1.weight": [base, 2 * base, 3, 3],
            "decoder.up_blocks.3.resnets.2.conv2.weight": [base, base, 3, 3, 3],
            "decoder.conv_out.weight": [3, base, 3, 3, 3],
        }
        for name, shape in expected.items():
            self.assertEqual(shapes.get(name), shape, name)
        self.assertNotIn("decoder.up_blocks.2.upsamplers.0.time_conv.weight", shapes)

    def test_odd_latent_sizes_round_trip_shapes(self):
        model = QwenImageVae(tiny_configs.VAE).eval()
        with torch.no_grad():
            mean = model.encode(torch.zeros(1, 3, 1, 40, 56))
            image = model.decode(torch.zeros(1, 16, 1, 5, 3))
        self.assertEqual(list(mean.shape), [1, 16, 1, 5, 7])
        self.assertEqual(list(image.shape), [1, 3, 1, 40, 24])


class QwenVlTest(unittest.TestCase):
    config = tiny_configs.TEXT_ENCODER

    def test_window_index_pads_partial_and_whole_windows(self):
        # 6 x 10 patches -> merged 3 x 5 -> windows of 2 x 2 merged tokens with partial padding.
        order, cu = window_index([(1, 6, 10)], self.config.vision)
        self.assertEqual(order.tolist(), [0, 1, 5, 6, 2, 3, 7, 8, 4, 9, 10, 11, 12, 13, 14])
        self.assertEqual(cu, [0, 16, 32, 40, 48, 56, 60])
        # 4 x 4 patches -> merged 2 x 2: a whole padding window is added on each axis.
        order, cu = window_index([(1, 4, 4)], self.config.vision)
        self.assertEqual(order.tolist(), [0, 1, 2, 3])
        self.assertEqual(cu, [0, 16, 16, 16, 16])

    def test_rope_index_continues_after_image_at_max_grid(self):
        ids = self.config
        input_ids = torch.tensor([5, 6, ids.vision_start_token_id] + [ids.image_token_id] * 6
                                 + [ids.vision_end_token_id, 7])
        positions = rope_index(input_ids, [(1, 4, 6)], self.config)  # merged grid 2 x 3
        self.assertEqual(positions[:, :3].tolist(), [[0, 1, 2]] * 3)
        self.assertEqual(positions[0, 3:9].tolist(), [3] * 6)
        self.assertEqual(positions[1, 3:9].tolist(), [3, 3, 3, 4, 4, 4])
        self.assertEqual(positions[2, 3:9].tolist(), [3, 4, 5, 3, 4, 5])
        self.assertEqual(positions[:, 9:].tolist(), [[6, 7]] * 3)

    def test_mrope_with_equal_axes_is_plain_rope(self):
        positions = torch.arange(7)[None].expand(3, -1)
        cos, sin = mrope_cos_sin(positions, self.config, torch.float64)
        inv_freq = 1.0 / (self.config.rope_theta ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
        angles = positions[0, :, None].double() * inv_freq
        self.assertTrue(torch.allclose(cos, torch.cat([angles, angles], -1).cos()))
        self.assertTrue(torch.allclose(sin, torch.cat([angles, angles], -1).sin()))

    def test_processor_rows_follow_merge_order(self):
        image = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
        rows, grid = processor_pixel_values(image, self.config.vision)
        self.assertEqual(grid, (1, 4, 6))
        normalised = (image.astype(np.float64) / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) \
            / np.array([0.26862954, 0.26130258, 0.27577711])
        # Row 5 = merge block (0, 1), inner (0, 1) -> patch row 0, patch column 3.
        patch = normalised[0:14, 42:56].transpose(2, 0, 1)  # [3, 14, 14]
        expected = np.stack([patch, patch], axis=1).reshape(-1)  # (channel, frame, y, x)
        self.assertTrue(np.allclose(rows[5].numpy(), expected, atol=1e-5))

    def test_image_token_count_mismatch_is_rejected(self):
        model = Qwen25VL(self.config)
        input_ids = torch.tensor([1, self.config.image_token_id, 2])
        with self.assertRaisesRegex(ValueError, "1 image tokens in input_ids but 2 image embeddings"):
            model.model.embed(input_ids, torch.zeros(2, 32))


class PipelineMathTest(unittest.TestCase):
    def test_calculate_dimensions_rounds_half_to_even(self):
        self.assertEqual(pipeline_math.calculate_dimensions(1024 * 1024, 1040 * 1040 / 1024 ** 2)[0], 1024)
        self.assertEqual(pipeline_math.calculate_dimensions(1024 * 1024, 1104 * 1104 / 1024 ** 2)[0], 1088)

    def test_edit_plus_sizes_for_four_by_three(self):
        sizes = pipeline_math.edit_plus_sizes(1024, 768)
        self.assertEqual(sizes["vae_size"], [1184, 896])
        self.assertEqual(sizes["vl_size"], [448, 320])
        self.assertEqual(sizes["processor_size"], [448, 308])
        self.assertEqual(sizes["image_tokens"], 176)

    def test_smart_resize_limits(self):
        self.assertEqual(pipeline_math.smart_resize(384, 384), (392, 392))
        height, width = pipeline_math.smart_resize(10, 30)
        self.assertGreaterEqual(height * width, pipeline_math.MIN_PIXELS)
        with self.assertRaisesRegex(ValueError, "exceeds 200"):
            pipeline_math.smart_resize(10, 2100)

    def test_pack_channel_index(self):
        latents = torch.randn(1, 16, 1, 4, 6)
        packed = pipeline_math.pack_latents(latents)
        channel, dy, dx, row, col = 5, 1, 0, 1, 2
        token = row * 3 + col
        self.assertEqual(packed[0, token, channel * 4 + dy * 2 + dx],
                         latents[0, channel, 0, 2 * row + dy, 2 * col + dx])
        self.assertTrue(torch.equal(pipeline_math.unpack_latents(packed, 4, 6), latents))

    def test_cfg_output_has_conditional_norm(self):
        cond, uncond = torch.randn(1, 5, 64), torch.randn(1, 5, 64)
        result = pipeline_math.cfg_norm_rescale(cond, uncond, 4.0)
        self.assertTrue(torch.allclose(result.norm(dim=-1), cond.norm(dim=-1), rtol=1e-5))


class SchedulerTest(unittest.TestCase):
    def test_default_schedule_for_4096_tokens(self):
        mu, sigmas, timesteps = scheduler.sigma_schedule(40, 4096)
        self.assertAlmostEqual(mu, 0.5 + (4096 - 256) * 0.4 / 7936, places=12)
        self.assertEqual(len(sigmas), 41)
        self.assertEqual(float(sigmas[0]), 1.0)
        self.assertAlmostEqual(float(sigmas[1]), 0.9870, places=4)
        self.assertAlmostEqual(float(sigmas[-2]), 0.02, places=6)
        self.assertEqual(float(sigmas[-1]), 0.0)
        self.assertTrue(np.array_equal(timesteps, sigmas[:-1] * np.float32(1000)))

    def test_lightning_schedule_is_constant_shift_three(self):
        for steps in (4, 8):
            _, sigmas, _ = scheduler.sigma_schedule(steps, 4096, scheduler.LIGHTNING_SCHEDULER)
            s = np.linspace(1.0, 1.0 / steps, steps)
            self.assertTrue(np.allclose(sigmas[:-1], 3 * s / (1 + 2 * s), atol=1e-6))


class CommittedVectorsTest(unittest.TestCase):
    def test_committed_vectors_reproduce(self):
        committed = make_test_vectors.DEFAULT_OUTPUT
        weights = os.path.join(committed, "tiny", "transformer", "diffusion_pytorch_model.safetensors")
        if not os.path.exists(weights):
            self.skipTest(f"no committed vectors at {committed}")
        _, metadata = read_safetensors(weights)
        if metadata.get("torch_version") != torch.__version__:
            self.skipTest(f"vectors were made with torch {metadata.get('torch_version')}, "
                          f"this is torch {torch.__version__}")
        with tempfile.TemporaryDirectory() as scratch:
            make_test_vectors.generate_all(scratch)
            self.assertEqual(make_test_vectors.compare_trees(committed, scratch), [])

    def test_transformer_case_reloads_and_matches(self):
        path = os.path.join(make_test_vectors.DEFAULT_OUTPUT, "transformer",
                            "case_two_references.safetensors")
        if not os.path.exists(path):
            self.skipTest(f"no committed vectors at {path}")
        tensors, metadata = read_safetensors(path)
        weights, _ = read_safetensors(os.path.join(make_test_vectors.DEFAULT_OUTPUT, metadata["weights"]))
        model = dit.QwenImageTransformer(tiny_configs.TRANSFORMER).eval()
        model.load_state_dict(weights)
        with torch.no_grad():
            result = make_test_vectors.run_transformer(model, tensors)
        self.assertLess(float((result - tensors["output.sample"]).abs().max()), 1e-5)
        self.assertTrue(math.isclose(float(tensors["input.timestep"]), 0.41, rel_tol=1e-6))


if __name__ == "__main__":
    unittest.main()
