#!/usr/bin/python3
"""Generate the tiny Qwen-Image-Edit-2511 weights and test vectors under tests/data/models.

Usage (Debian's python3 with python3-torch and python3-numpy):
    /usr/bin/python3 tools/reference/make_test_vectors.py            # rewrite the files
    /usr/bin/python3 tools/reference/make_test_vectors.py --check    # compare, write nothing

Everything is seeded and computed on one CPU thread in float32. A rerun with the same
torch version therefore reproduces the files byte for byte, which `--check` verifies.
"""

import argparse
import filecmp
import json
import os
import sys
import tempfile

import torch

sys.dont_write_bytecode = True  # keep __pycache__ out of the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pipeline_math  # noqa: E402
import scheduler  # noqa: E402
import tiny_configs  # noqa: E402
from qwen_vl import Qwen25VL, processor_pixel_values, rope_index  # noqa: E402
from safetensors_io import write_safetensors  # noqa: E402
from transformer import QwenImageTransformer  # noqa: E402
from vae import QwenImageVae, denormalize_latents, normalize_latents  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "tests", "data", "models")
GENERATOR = "tools/reference/make_test_vectors.py"


# ----------------------------------------------------------------------------------------
# Shared helpers


def seeded_init(module, seed):
    """Fill every parameter from one generator, in sorted name order.

    Norm scales (RMSNorm weight, VAE gamma) get 1 + 0.1 N(0, 1), biases 0.1 N(0, 1),
    embeddings N(0, 1), other weights N(0, 1) / sqrt(fan_in).
    """
    norm_names = set()
    for module_name, child in module.named_modules():
        if type(child).__name__ == "RMSNorm":
            for parameter_name, _ in child.named_parameters(recurse=False):
                norm_names.add(f"{module_name}.{parameter_name}" if module_name else parameter_name)
    generator = torch.Generator().manual_seed(seed)
    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for name in sorted(parameters):
            parameter = parameters[name]
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if name in norm_names:
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                parameter.copy_(0.1 * noise)
            elif name.endswith("embed_tokens.weight"):
                parameter.copy_(noise)
            else:
                fan_in = parameter[0].numel()
                parameter.copy_(noise / fan_in ** 0.5)


def base_metadata(description, **extra):
    metadata = {"generator": GENERATOR, "torch_version": torch.__version__, "description": description}
    for key, value in extra.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def save(output, relative_path, tensors, metadata):
    path = os.path.join(output, relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    contiguous = {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
    write_safetensors(path, contiguous, metadata)


def save_text(output, relative_path, text):
    path = os.path.join(output, relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as file:
        file.write(text)


def save_json(output, relative_path, value):
    save_text(output, relative_path, json.dumps(value, indent=2) + "\n")


def save_weights(output, relative_path, module, dtype=torch.float32):
    tensors = {name: tensor.to(dtype) for name, tensor in module.state_dict().items()}
    metadata = base_metadata("seeded random weights", format="pt")
    save(output, relative_path, tensors, metadata)


def max_abs_difference(first, second):
    return float((first.double() - second.double()).abs().max())


def prefixed(prefix, trace):
    return {f"{prefix}.{name}": tensor for name, tensor in trace.items()}


def randn(generator, *shape):
    return torch.randn(shape, generator=generator, dtype=torch.float32)


# ----------------------------------------------------------------------------------------
# Transformer


TRANSFORMER_CASES = [
    # name, img_shapes, text length, sigma, valid text length (None = no mask), zero_cond_t, input seed
    ("case_one_reference", [(1, 3, 5), (1, 5, 3)], 7, 0.73, None, True, 2000),
    ("case_two_references", [(1, 3, 5), (1, 5, 3), (1, 7, 4)], 9, 0.41, None, True, 2001),
    # The same inputs as case_one_reference, so only the flag differs.
    ("case_zero_cond_off", [(1, 3, 5), (1, 5, 3)], 7, 0.73, None, False, 2000),
    ("case_text_mask", [(1, 3, 5), (1, 5, 3)], 9, 0.73, 6, True, 2003),
]


def transformer_inputs(img_shapes, text_length, sigma, mask_length, seed):
    config = tiny_configs.TRANSFORMER
    generator = torch.Generator().manual_seed(seed)
    image_tokens = sum(f * h * w for f, h, w in img_shapes)
    inputs = {
        "input.hidden_states": randn(generator, 1, image_tokens, config.in_channels),
        "input.encoder_hidden_states": randn(generator, 1, text_length, config.joint_attention_dim),
        "input.timestep": torch.tensor([sigma], dtype=torch.float32),
        "input.img_shapes": torch.tensor(img_shapes, dtype=torch.int64),
    }
    if mask_length is not None:
        mask = torch.zeros(1, text_length, dtype=torch.int64)
        mask[:, :mask_length] = 1
        inputs["input.encoder_hidden_states_mask"] = mask
    return inputs


def run_transformer(model, inputs, trace=None):
    mask = inputs.get("input.encoder_hidden_states_mask")
    return model(
        inputs["input.hidden_states"].to(next(model.parameters()).dtype),
        inputs["input.encoder_hidden_states"].to(next(model.parameters()).dtype),
        inputs["input.timestep"].to(next(model.parameters()).dtype),
        [tuple(row) for row in inputs["input.img_shapes"].tolist()],
        encoder_hidden_states_mask=mask,
        trace=trace,
    )


def generate_transformer(output):
    config = tiny_configs.TRANSFORMER
    model = QwenImageTransformer(config).eval()
    seeded_init(model, seed=1001)
    save_text(output, "tiny/transformer/config.json", config.to_diffusers_json())
    save_weights(output, "tiny/transformer/diffusion_pytorch_model.safetensors", model)
    save_weights(output, "tiny/transformer/diffusion_pytorch_model.bf16.safetensors", model, torch.bfloat16)
    reference_f64 = QwenImageTransformer(config).eval().double()
    reference_f64.load_state_dict(model.state_dict())

    for name, img_shapes, text_length, sigma, mask_length, zero_cond_t, seed in TRANSFORMER_CASES:
        inputs = transformer_inputs(img_shapes, text_length, sigma, mask_length, seed)
        model.zero_cond_t = zero_cond_t
        reference_f64.zero_cond_t = zero_cond_t
        trace = {}
        with torch.no_grad():
            result = run_transformer(model, inputs, trace)
            result_f64 = run_transformer(reference_f64, inputs)
        tensors = dict(inputs)
        tensors["output.sample"] = result
        tensors.update(prefixed("intermediate", trace))
        metadata = base_metadata(
            f"QwenImageTransformer2DModel forward, {len(img_shapes) - 1} reference image(s)",
            weights="tiny/transformer/diffusion_pytorch_model.safetensors",
            config_overrides={"zero_cond_t": zero_cond_t},
            img_shapes=img_shapes,
            f32_vs_f64_max_abs_diff=max_abs_difference(result, result_f64),
        )
        save(output, f"transformer/{name}.safetensors", tensors, metadata)

    # The same inputs as case_one_reference with weights rounded to bf16 (compute stays f32).
    model.zero_cond_t = True
    bf16_model = QwenImageTransformer(config).eval()
    bf16_model.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    name, img_shapes, text_length, sigma, mask_length, _, seed = TRANSFORMER_CASES[0]
    inputs = transformer_inputs(img_shapes, text_length, sigma, mask_length, seed)
    with torch.no_grad():
        result = run_transformer(bf16_model, inputs)
        result_f32_weights = run_transformer(model, inputs)
    tensors = dict(inputs)
    tensors["output.sample"] = result
    metadata = base_metadata(
        "case_one_reference with the bf16 weights file, computed in f32",
        weights="tiny/transformer/diffusion_pytorch_model.bf16.safetensors",
        config_overrides={"zero_cond_t": True},
        img_shapes=img_shapes,
        max_abs_diff_to_f32_weights=max_abs_difference(result, result_f32_weights),
    )
    save(output, "transformer/case_one_reference_bf16_weights.safetensors", tensors, metadata)


# ----------------------------------------------------------------------------------------
# VAE


def generate_vae(output):
    config = tiny_configs.VAE
    model = QwenImageVae(config).eval()
    seeded_init(model, seed=1002)
    save_text(output, "tiny/vae/config.json", config.to_diffusers_json())
    save_weights(output, "tiny/vae/diffusion_pytorch_model.safetensors", model)
    reference_f64 = QwenImageVae(config).eval().double()
    reference_f64.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(3000)

    image = torch.rand((1, 3, 1, 40, 56), generator=generator) * 2.0 - 1.0
    with torch.no_grad():
        conv_in = model.encoder.conv_in(image)
        moments = model.encode_moments(image)
        moments_f64 = reference_f64.encode_moments(image.double())
    mean = moments[:, : config.z_dim]
    tensors = {
        "input.image": image,
        "intermediate.encoder_conv_in": conv_in,
        "output.moments": moments,
        "output.mean": mean,
        "normalize.latents": normalize_latents(mean, config),
    }
    metadata = base_metadata(
        "VAE encode of one frame: moments = quant_conv(encoder(image)) = [mean | logvar]; "
        "normalize.latents = (mean - latents_mean) / latents_std, the pipeline step after encode",
        weights="tiny/vae/diffusion_pytorch_model.safetensors",
        f32_vs_f64_max_abs_diff=max_abs_difference(moments, moments_f64),
    )
    save(output, "vae/encode.safetensors", tensors, metadata)

    normalized = randn(generator, 1, config.z_dim, 1, 5, 3)
    latents = denormalize_latents(normalized, config)
    with torch.no_grad():
        decoded = model.decode(latents)
        unclamped = model.decoder(model.post_quant_conv(latents))
        decoded_f64 = reference_f64.decode(latents.double())
    tensors = {
        "denormalize.normalized_latents": normalized,
        "input.latents": latents,
        "intermediate.decoder_unclamped": unclamped,
        "output.image": decoded,
    }
    clamped_fraction = float((unclamped.abs() > 1.0).double().mean())
    metadata = base_metadata(
        "VAE decode of one frame: image = clamp(decoder(post_quant_conv(latents)), -1, 1); "
        "input.latents = denormalize.normalized_latents * latents_std + latents_mean, "
        "the pipeline step before decode",
        weights="tiny/vae/diffusion_pytorch_model.safetensors",
        clamped_fraction=clamped_fraction,
        f32_vs_f64_max_abs_diff=max_abs_difference(decoded, decoded_f64),
    )
    save(output, "vae/decode.safetensors", tensors, metadata)


# ----------------------------------------------------------------------------------------
# Text encoder (vision tower and language model)

VISION_IMAGES = [(84, 140), (56, 56)]  # (height, width): 6 x 10 and 4 x 4 patches


def text_encoder_input_ids(generator, image_token_counts):
    """Build a chat-template-shaped sequence with one vision span per image."""
    ids = tiny_configs.SPECIAL_IDS

    def text(count):
        return torch.randint(0, tiny_configs.FIRST_SPECIAL_ID, (count,), generator=generator).tolist()

    sequence = [ids["<|im_start|>"]] + text(5) + [ids["<|im_end|>"]] + text(1)
    sequence += [ids["<|im_start|>"]] + text(2)
    for count in image_token_counts:
        sequence += text(3) + [ids["<|vision_start|>"]]
        sequence += [ids["<|image_pad|>"]] * count + [ids["<|vision_end|>"]]
    sequence += text(6) + [ids["<|im_end|>"]] + text(1) + [ids["<|im_start|>"]] + text(2)
    return torch.tensor(sequence, dtype=torch.int64)


def generate_text_encoder(output):
    config = tiny_configs.TEXT_ENCODER
    model = Qwen25VL(config).eval()
    seeded_init(model, seed=1003)
    save_text(output, "tiny/text_encoder/config.json", config.to_transformers_json())
    save_weights(output, "tiny/text_encoder/model.safetensors", model)
    reference_f64 = Qwen25VL(config).eval().double()
    reference_f64.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(4000)

    images, rows, grids = [], [], []
    for height, width in VISION_IMAGES:
        image = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        pixel_rows, grid = processor_pixel_values(image.numpy(), config.vision)
        images.append(image)
        rows.append(pixel_rows)
        grids.append(grid)
    pixel_values = torch.cat(rows)
    grid_thw = torch.tensor(grids, dtype=torch.int64)

    vision_trace = {}
    with torch.no_grad():
        image_embeds = model.visual(pixel_values, grids, vision_trace)
        image_embeds_f64 = reference_f64.visual(pixel_values.double(), grids)
    tensors = {
        "input.pixel_values": pixel_values,
        "input.image_grid_thw": grid_thw,
        "output.image_embeds": image_embeds,
    }
    for index, image in enumerate(images):
        tensors[f"processor.image{index}_uint8"] = image
    tensors.update(prefixed("intermediate", vision_trace))
    metadata = base_metadata(
        "Qwen2.5-VL vision tower: processor rows of two images -> merged embeddings in image order; "
        "processor.image*_uint8 [H, W, 3] are the RGB inputs of input.pixel_values",
        weights="tiny/text_encoder/model.safetensors",
        f32_vs_f64_max_abs_diff=max_abs_difference(image_embeds, image_embeds_f64),
    )
    save(output, "text_encoder/vision.safetensors", tensors, metadata)

    token_counts = [(h // 28) * (w // 28) for h, w in VISION_IMAGES]
    input_ids = text_encoder_input_ids(generator, token_counts)
    position_ids = rope_index(input_ids, grids, config)
    lm_trace = {}
    with torch.no_grad():
        inputs_embeds = model.model.embed(input_ids, image_embeds)
        hidden = model.model(inputs_embeds, position_ids, lm_trace)
        embeds_f64 = reference_f64.model.embed(input_ids, image_embeds.double())
        hidden_f64 = reference_f64.model(embeds_f64, position_ids)
        end_to_end = model(input_ids, pixel_values, grid_thw)
    if max_abs_difference(end_to_end, hidden) != 0.0:
        raise AssertionError("the chained text encoder disagrees with the split run")
    tensors = {
        "input.input_ids": input_ids[None],
        "input.image_grid_thw": grid_thw,
        "input.image_embeds": image_embeds,
        "intermediate.position_ids": position_ids,
        "intermediate.inputs_embeds": inputs_embeds[None],
        "output.last_hidden_state": hidden[None],
    }
    tensors.update({f"intermediate.{name}": value[None] for name, value in lm_trace.items()})
    metadata = base_metadata(
        "Qwen2.5-VL language model: input_ids with two image spans, image rows replaced by "
        "input.image_embeds (= output.image_embeds of vision.safetensors), 3D M-RoPE positions; "
        "output after the final RMSNorm",
        weights="tiny/text_encoder/model.safetensors",
        special_token_ids=tiny_configs.SPECIAL_IDS,
        f32_vs_f64_max_abs_diff=max_abs_difference(hidden, hidden_f64),
    )
    save(output, "text_encoder/language_model.safetensors", tensors, metadata)


# ----------------------------------------------------------------------------------------
# Scheduler and pipeline arithmetic


def float_list(values):
    return [float(value) for value in values]


def bf16_model_timesteps(timesteps):
    """Return the sigma that a bf16 transformer receives: bf16(bf16(t) / 1000)."""
    as_bf16 = torch.tensor(timesteps, dtype=torch.float32).to(torch.bfloat16)
    return float_list((as_bf16 / 1000).float())


def generate_scheduler(output):
    save_json(output, "tiny/scheduler/scheduler_config.json", scheduler.QWEN_IMAGE_SCHEDULER)
    cases = []
    for label, config, steps, seq_len in [
        ("default", scheduler.QWEN_IMAGE_SCHEDULER, 40, 4096),
        ("default", scheduler.QWEN_IMAGE_SCHEDULER, 50, 1024),
        ("lightning", scheduler.LIGHTNING_SCHEDULER, 4, 4096),
        ("lightning", scheduler.LIGHTNING_SCHEDULER, 8, 4096),
    ]:
        mu, sigmas, timesteps = scheduler.sigma_schedule(steps, seq_len, config)
        cases.append({
            "schedule": label,
            "num_inference_steps": steps,
            "image_seq_len": seq_len,
            "mu": mu,
            "sigmas": float_list(sigmas),
            "timesteps": float_list(timesteps),
            "bf16_model_timestep": bf16_model_timesteps(timesteps),
        })
    save_json(output, "scheduler/sigmas.json", {
        "generator": GENERATOR,
        "torch_version": torch.__version__,
        "description": "FlowMatchEulerDiscreteScheduler sigmas (float32, final 0 appended), timesteps = "
                       "sigma * 1000, and the sigma the bf16 transformer receives",
        "configs": {"default": scheduler.QWEN_IMAGE_SCHEDULER, "lightning": scheduler.LIGHTNING_SCHEDULER},
        "cases": cases,
    })


def generate_pipeline_math(output):
    dimensions = []
    for area, ratio in [
        (1024 * 1024, 1.0), (1024 * 1024, 4 / 3), (1024 * 1024, 16 / 9), (1024 * 1024, 3 / 2),
        (384 * 384, 4 / 3), (384 * 384, 9 / 16), (384 * 384, 0.3),
        (1024 * 1024, 1040 * 1040 / (1024 * 1024)),  # width / 32 is exactly 32.5: ties to even (1024)
        (1024 * 1024, 1104 * 1104 / (1024 * 1024)),  # width / 32 is exactly 34.5: ties to even (1088)
    ]:
        width, height = pipeline_math.calculate_dimensions(area, ratio)
        dimensions.append({"target_area": area, "ratio": ratio, "width": width, "height": height})
    resizes = []
    for height, width in [(384, 384), (320, 448), (288, 512), (320, 480), (10, 30), (5000, 5000),
                          (41, 43), (3000, 20), (14, 14)]:
        new_height, new_width = pipeline_math.smart_resize(height, width)
        resizes.append({"height": height, "width": width, "resized_height": new_height,
                        "resized_width": new_width})
    rejected = []
    for height, width in [(10, 2100), (3000, 14)]:
        try:
            pipeline_math.smart_resize(height, width)
        except ValueError:
            rejected.append({"height": height, "width": width})
    if len(rejected) != 2:
        raise AssertionError("smart_resize accepted an aspect ratio above 200")
    input_sizes = [(1024, 1024), (1024, 768), (1920, 1080), (1536, 1024)]
    sizes = [pipeline_math.edit_plus_sizes(width, height) for width, height in input_sizes]
    save_json(output, "pipeline/dimensions.json", {
        "generator": GENERATOR,
        "torch_version": torch.__version__,
        "description": "calculate_dimensions (32-multiples, round half to even), Qwen2-VL smart_resize "
                       f"(factor 28, min_pixels {pipeline_math.MIN_PIXELS}, "
                       f"max_pixels {pipeline_math.MAX_PIXELS}), "
                       "and the Edit-Plus sizes derived from one input image",
        "calculate_dimensions": dimensions,
        "smart_resize": resizes,
        "smart_resize_rejected": rejected,
        "edit_plus_sizes": sizes,
    })

    generator = torch.Generator().manual_seed(5000)
    latents = torch.arange(16 * 4 * 6, dtype=torch.float32).view(1, 16, 1, 4, 6)
    packed = pipeline_math.pack_latents(latents)
    if not torch.equal(pipeline_math.unpack_latents(packed, 4, 6), latents):
        raise AssertionError("unpack_latents does not invert pack_latents")
    cond, uncond = randn(generator, 1, 6, 64), randn(generator, 1, 6, 64)
    velocity = randn(generator, 1, 6, 64)
    sigma, sigma_next = 0.9736, 0.9599
    tensors = {
        "pack.latents": latents,
        "pack.packed": packed,
        "cfg.cond": cond,
        "cfg.uncond": uncond,
        "cfg.scale": torch.tensor(4.0),
        "cfg.output": pipeline_math.cfg_norm_rescale(cond, uncond, 4.0),
        "euler.latents": packed,
        "euler.velocity": velocity,
        "euler.sigma": torch.tensor(sigma),
        "euler.sigma_next": torch.tensor(sigma_next),
        "euler.output": scheduler.euler_step(packed, velocity, sigma, sigma_next),
    }
    metadata = base_metadata(
        "pack [1,16,1,4,6] -> [1,6,64] (values = flat index), true-CFG norm rescale with scale 4, "
        "one Euler step")
    save(output, "pipeline/tensors.safetensors", tensors, metadata)


GENERATORS = [
    generate_transformer, generate_vae, generate_text_encoder, generate_scheduler, generate_pipeline_math]


def generate_all(output):
    torch.set_num_threads(1)
    for generate in GENERATORS:
        generate(output)


def compare_trees(expected_dir, actual_dir):
    """Return a list of relative paths that differ, are missing, or are extra."""
    problems = []
    for root, _, files in os.walk(actual_dir):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), actual_dir)
            committed = os.path.join(expected_dir, relative)
            if not os.path.exists(committed):
                problems.append(f"missing from {expected_dir}: {relative}")
            elif not filecmp.cmp(committed, os.path.join(root, name), shallow=False):
                problems.append(f"differs: {relative}")
    return problems


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="directory to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary directory and compare with --output")
    args = parser.parse_args()
    if not args.check:
        generate_all(args.output)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        generate_all(scratch)
        problems = compare_trees(args.output, scratch)
    for problem in problems:
        print(problem)
    print("test vectors reproduce" if not problems else f"{len(problems)} file(s) do not reproduce")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
