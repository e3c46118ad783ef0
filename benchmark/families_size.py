"""What each model family costs at its published size: parameters, memory and denoiser time per step.

    OMP_NUM_THREADS=1 python -m benchmark.families_size [--families sd15,sdxl,pixart,sd3,flux] [--size 256] [--repeats 3]

Builds each family's denoiser at full size from its public config values (below; random weights, nothing is
downloaded) and calls it the way one edit step does, through the family seam (pipelines.families: the same
`predict` and MQD processors LayeredPipeline uses), at a small resolution on this machine's CPU:
- "CFG + MQD": a batch of 2 (unconditional, conditional) with three regions (background, one earlier layer,
  the edit), one fused regional attention call per cross-attention layer;
- "distilled + MQD": a batch of 1 with a guidance-scale embedding (a fused adapter's LoRA costs nothing extra);
- "CFG plain": a batch of 2, plain cross-attention (what MQD adds is the difference to the first).
SD3-medium and FLUX.1-dev (joint attention; `measure_joint`): MQD over 3 regions against one plain prompt (T5
padding masked and cut, as the editor runs these families) and against diffusers' own call over the whole padded
T5 window; SD3 with CFG (2 rows, the unconditional one plain), FLUX-dev distilled (1 row, its guidance
embedding). FLUX's 12 B parameters do not fit this machine: its step time is computed from 2 dual-stream and 2
single-stream blocks built at full width and timed (the rest of the call + 19 x dual + 38 x single); its
parameters are counted from the full config on the meta device. SD3-medium is built and timed whole.
Text encoders and the VAE are counted on the meta device (no memory); their weights at 16 bits are what a
GPU needs on top of the denoiser's. Each family runs in its own process, so "peak RSS" is that family's own
high-water mark; "peak - baseline" subtracts what the process held before building the denoiser.
Weights are bfloat16 by default (the bytes of fp16 on a GPU; this CPU computes bf16 natively).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

# Published config values (the diffusers/transformers config.json of each model's components).
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768)
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, latent_channels=4, norm_num_groups=32)
FAMILIES = {
    "sd15": {  # runwayml/stable-diffusion-v1-5
        "label": "SD 1.5", "native": 512, "tokens": 77,
        "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                     down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        "text": {"text_encoder": ("clip", CLIP_L)},
    },
    "sdxl": {  # stabilityai/stable-diffusion-xl-base-1.0
        "label": "SDXL base 1.0", "native": 1024, "tokens": 77,
        "unet": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                     block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                     transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
                     addition_embed_type="text_time", addition_time_embed_dim=256,
                     projection_class_embeddings_input_dim=2816),
        "text": {"text_encoder": ("clip", CLIP_L),
                 "text_encoder_2": ("clip-projection", dict(
                     hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                     max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280))},
    },
    "pixart": {  # PixArt-alpha/PixArt-XL-2-1024-MS
        "label": "PixArt-α XL-2 1024-MS", "native": 1024, "tokens": 120,
        "transformer": dict(sample_size=128, num_layers=28, num_attention_heads=16, attention_head_dim=72,
                            in_channels=4, out_channels=8, patch_size=2, cross_attention_dim=1152,
                            caption_channels=4096, attention_bias=True, activation_fn="gelu-approximate",
                            num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                            norm_eps=1e-6),
        "text": {"text_encoder": ("t5", dict(  # google/t5-v1_1-xxl, encoder only
            d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32))},
    },
}
T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128,  # encoder only
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              max_position_embeddings=77, vocab_size=49408, hidden_act="gelu", projection_dim=1280)
FLOW_VAE = {**SD_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
# The joint-attention families (pipelines/mmdit_families.py): their own measurement, `measure_joint`.
JOINT_FAMILIES = {
    "sd3": {  # stabilityai/stable-diffusion-3-medium-diffusers
        "label": "SD3-medium", "native": 1024, "clip_tokens": 77, "t5_tokens": 256, "rows": 2,
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192),
        "text": {"text_encoder": ("clip-projection", CLIP_L), "text_encoder_2": ("clip-projection", CLIP_G),
                 "text_encoder_3": ("t5", T5_XXL)},
    },
    "flux": {  # black-forest-labs/FLUX.1-dev
        "label": "FLUX.1-dev", "native": 1024, "clip_tokens": 0, "t5_tokens": 512, "rows": 1,
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        # 12 B parameters (24 GiB in 16 bits) do not fit this machine's memory: 2 + 2 blocks at full width are
        # built and timed, and a step is computed as the rest + 19 x a dual-stream + 38 x a single-stream block.
        "built_blocks": (2, 2),
        "text": {"text_encoder": ("clip", CLIP_L), "text_encoder_2": ("t5", T5_XXL)},
    },
}
REGIONS = 3  # background, one earlier layer, the edit
VALID_TOKENS = 20  # real tokens per region prompt; the rest of a T5 window is padding
GIB = 2**30


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def text_encoder(kind: str, values: dict) -> torch.nn.Module:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    with torch.device("meta"):
        if kind == "t5":
            return T5EncoderModel(T5Config(**values))
        model = CLIPTextModelWithProjection if kind == "clip-projection" else CLIPTextModel
        return model(CLIPTextConfig(**values))


def random_denoiser(spec: dict, dtype: torch.dtype) -> tuple[str, torch.nn.Module]:
    """The denoiser at full size with random weights (N(0, 0.02); timing does not depend on the values)."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    name, cls = ("transformer", PixArtTransformer2DModel) if "transformer" in spec else ("unet", UNet2DConditionModel)
    with torch.device("meta"):
        model = cls(**spec[name])
    model = model.to_empty(device="cpu").to(dtype)  # allocated once, in the target dtype
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32).mul_(0.02))
        for buffer in model.buffers():
            buffer.zero_()
    return name, model.eval()


def measure(key: str, size: int, repeats: int, dtype: torch.dtype) -> dict:
    """One family, in this process: build, then time its denoiser calls (median of `repeats` after a warm-up)."""
    from diffusers import AutoencoderKL

    from pipelines.attention import RegionMaps, regional_attention
    from pipelines.families import TextConditioning, family_class
    from pipelines.guidance_format import EMBEDDING_DIM, add_guidance_projection, guidance_embedding

    spec = FAMILIES[key]
    torch.set_flush_denormal(True)
    baseline = peak_rss()
    encoders = {name: text_encoder(*entry) for name, entry in spec["text"].items()}
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE)
    started = time.perf_counter()
    denoiser_name, denoiser = random_denoiser(spec, dtype)
    build_seconds = time.perf_counter() - started
    # The family seam needs only the components it reads; tokenizers are not used here.
    parts = {"unet": None, "transformer": None, "text_encoder_2": None, **encoders, denoiser_name: denoiser}
    components = SimpleNamespace(tokenizer=True, tokenizer_2=True, vae=vae, vae_scale_factor=8, **parts)
    family = family_class(components)(components)

    latent = size // 8
    latents = torch.randn(2, 4, latent, latent, generator=torch.Generator().manual_seed(1)).to(dtype)
    width = int(denoiser.config.cross_attention_dim) if denoiser_name == "unet" else int(denoiser.config.caption_channels)
    tokens = spec["tokens"]
    hidden = torch.randn(2, REGIONS * tokens, width, dtype=dtype)
    mask = torch.zeros(2, REGIONS * tokens, dtype=torch.bool)
    for region in range(REGIONS):
        mask[:, region * tokens:region * tokens + VALID_TOKENS] = True
    pooled = torch.randn(2, 1280, dtype=dtype) if key == "sdxl" else None
    text = TextConditioning(hidden, mask if denoiser_name == "transformer" else None, pooled)
    plain = TextConditioning(hidden[:, :tokens], None if text.attention_mask is None else mask[:, :tokens], pooled)
    region_masks = [np.ones((size, size), bool), np.zeros((size, size), bool), np.zeros((size, size), bool)]
    region_masks[1][: size // 2, : size // 2] = True
    region_masks[2][size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    maps = RegionMaps.from_masks(region_masks, tokens, (latent, latent), family.token_grids((latent, latent)))
    add_guidance_projection(denoiser)  # zero-initialised: the distilled call's extra input
    embedding = guidance_embedding(4.0, EMBEDDING_DIM, batch=1, dtype=dtype)
    t = torch.tensor(500)

    def one(batch_text, rows, timestep_cond=None):
        return family.predict(latents[:rows], t, batch_text, timestep_cond=timestep_cond)

    def first_row(value):
        return value if value is None else value[:1]

    variants = {
        "cfg_mqd": (lambda: one(text, 2), True),
        "distilled_mqd": (lambda: one(TextConditioning(text.embeds[:1], first_row(text.attention_mask),
                                                       first_row(text.pooled)), 1, embedding), True),
        "cfg_plain": (lambda: one(plain, 2), False),
    }
    seconds = {}
    with torch.no_grad():
        for name, (call, routed) in variants.items():
            with regional_attention(denoiser, maps, routes=family.routes) if routed else contextlib.nullcontext():
                times = []
                for index in range(repeats + 1):
                    started = time.perf_counter()
                    call()
                    if index:  # the first call warms up
                        times.append(time.perf_counter() - started)
            seconds[name] = statistics.median(times)
    text_params = {name: count(module) for name, module in encoders.items()}
    params = count(denoiser) - count(family.timestep_embedding(denoiser).cond_proj)
    return {
        "family": family.name, "label": spec["label"], "native_px": spec["native"], "size_px": size,
        "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "denoiser": type(denoiser).__name__, "denoiser_params": params, "text_encoder_params": text_params,
        "vae_params": count(vae),
        "weights_16bit_gib": {"denoiser": params * 2 / GIB, "text_encoders": sum(text_params.values()) * 2 / GIB,
                              "vae": count(vae) * 2 / GIB},
        "peak_rss_gib": peak_rss() / GIB, "peak_minus_baseline_gib": (peak_rss() - baseline) / GIB,
        "build_seconds": build_seconds, "step_seconds": seconds,
        "distilled_vs_cfg": seconds["distilled_mqd"] / seconds["cfg_mqd"],
        "mqd_overhead": seconds["cfg_mqd"] / seconds["cfg_plain"] - 1.0,
    }


def joint_denoiser(spec: dict, dtype: torch.dtype) -> tuple[torch.nn.Module, int]:
    """The transformer with random weights (N(0, 0.02)), all blocks or `built_blocks`; and the full config's
    parameter count, counted on the meta device."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if "num_single_layers" in spec["transformer"] else SD3Transformer2DModel
    with torch.device("meta"):
        full_params = count(cls(**spec["transformer"]))
        config = dict(spec["transformer"])
        if "built_blocks" in spec:
            config["num_layers"] = spec["built_blocks"][0]
            if "num_single_layers" in config:
                config["num_single_layers"] = spec["built_blocks"][1]
        model = cls(**config)
    model = model.to_empty(device="cpu").to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float32).mul_(0.02))
    return model.eval(), full_params


def block_timer(transformer) -> tuple[dict[str, dict[int, float]], list]:
    """Seconds of every transformer block within one step, by kind ("dual" / "single") and block index, via
    forward hooks (a block that runs in several calls of a step, e.g. CFG rows apart, adds them up)."""
    times: dict[str, dict[int, float]] = {"dual": {}, "single": {}}
    handles, started = [], {}
    kinds = [("dual", i, b) for i, b in enumerate(transformer.transformer_blocks)]
    kinds += [("single", i, b) for i, b in enumerate(getattr(transformer, "single_transformer_blocks", []))]
    for kind, index, block in kinds:
        def before(module, args, kwargs, key=id(block)):
            started[key] = time.perf_counter()

        def after(module, args, kwargs, output, key=id(block), kind=kind, index=index):
            times[kind][index] = times[kind].get(index, 0.0) + time.perf_counter() - started[key]

        handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(block.register_forward_hook(after, with_kwargs=True))
    return times, handles


def measure_joint(key: str, size: int, repeats: int, dtype: torch.dtype, built_blocks: int | None = None) -> dict:
    """SD3 / FLUX, in this process: time one denoiser call per step with MQD (3 regions), with one plain prompt
    (padding masked and cut, as the editor runs it), and with diffusers' plain call over the full padded window,
    in interleaved rounds (a load on the machine slows all three alike). `built_blocks`: build this many blocks of
    each kind and compute a step from them (large sizes; FLUX always)."""
    from diffusers import AutoencoderKL

    from pipelines.attention import RegionMaps
    from pipelines.families import family_class
    from pipelines.text_conditioning import TextConditioning

    spec = dict(JOINT_FAMILIES[key])
    if built_blocks is not None:
        spec["built_blocks"] = (built_blocks, built_blocks if key == "flux" else 0)
    torch.set_flush_denormal(True)
    baseline = peak_rss()
    encoders = {name: text_encoder(*entry) for name, entry in spec["text"].items()}
    with torch.device("meta"):
        vae = AutoencoderKL(**FLOW_VAE)
    started = time.perf_counter()
    denoiser, full_params = joint_denoiser(spec, dtype)
    build_seconds = time.perf_counter() - started
    parts = {"unet": None, "text_encoder_2": None, "text_encoder_3": None, **encoders}
    components = SimpleNamespace(tokenizer=True, tokenizer_2=True, tokenizer_3=True, vae=vae, vae_scale_factor=8,
                                 transformer=denoiser, **parts)
    family = family_class(components)(components)

    rows, latent = spec["rows"], size // 8
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(rows, 16, latent, latent, generator=generator).to(dtype)
    window = spec["clip_tokens"] + spec["t5_tokens"]
    width, pooled_width = int(denoiser.config.joint_attention_dim), int(denoiser.config.pooled_projection_dim)
    hidden = torch.randn(rows, REGIONS * window, width, generator=generator).to(dtype)
    mask = torch.zeros(rows, REGIONS * window, dtype=torch.bool)
    for region in range(REGIONS):  # CLIP's window is attended whole (as SD3 was trained), T5's real tokens only
        mask[:, region * window:region * window + spec["clip_tokens"] + VALID_TOKENS] = True
    pooled = torch.randn(rows, pooled_width, generator=generator).to(dtype)
    routed = family.prepare_text(TextConditioning(hidden, mask, pooled), REGIONS)
    single = family.prepare_text(TextConditioning(hidden[:, :window], mask[:, :window], pooled), 1)
    padded = TextConditioning(hidden[:, :window], None, pooled)  # diffusers: every token of the window attended
    region_masks = [np.ones((size, size), bool), np.zeros((size, size), bool), np.zeros((size, size), bool)]
    region_masks[1][: size // 2, : size // 2] = True
    region_masks[2][size // 4: 3 * size // 4, size // 4: 3 * size // 4] = True
    grids = family.token_grids((latent, latent))
    maps = RegionMaps.from_masks(region_masks, routed.tokens // REGIONS, (latent, latent), grids=grids)
    guidance = family.guidance_condition(3.5, rows, "cpu", dtype) if family.native_guidance else None
    plain_rows = (0,) if rows == 2 else ()  # SD3: CFG's unconditional row attends plainly
    t = torch.tensor(500.0)
    variants = {
        "mqd": (routed, lambda: family.attention_routing(maps, routed, None, plain_rows)),
        "plain": (single, lambda: family.attention_routing(None, single, None, plain_rows, (latent, latent))),
        "diffusers_window": (padded, contextlib.nullcontext),
    }
    seconds, blocks = {}, {}
    times, handles = block_timer(denoiser)
    calls = {name: [] for name in variants}
    with torch.no_grad():
        for index in range(repeats + 1):
            for name, (text, routing) in variants.items():
                with routing():
                    for kind in times:
                        times[kind].clear()
                    started = time.perf_counter()
                    family.predict(latents, t, text, timestep_cond=guidance)
                    if index:  # the first round warms up
                        calls[name].append((time.perf_counter() - started,
                                            {k: sum(v.values()) for k, v in times.items()},
                                            {k: statistics.median(v.values()) if v else 0.0 for k, v in times.items()}))
    for name, timed in calls.items():
        measured, block_sum, per_block = sorted(timed, key=lambda c: c[0])[len(timed) // 2]
        if "built_blocks" in spec:  # the rest of the call + every block of the full model
            full = spec["transformer"]
            rest = measured - sum(block_sum.values())
            seconds[name] = (rest + full["num_layers"] * per_block["dual"]
                             + full.get("num_single_layers", 0) * per_block["single"])
        else:
            seconds[name] = measured
        blocks[name] = per_block
    for handle in handles:
        handle.remove()
    text_params = {name: count(module) for name, module in encoders.items()}
    return {
        "family": family.name, "label": spec["label"], "native_px": spec["native"], "size_px": size,
        "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "rows": rows,
        "denoiser": type(denoiser).__name__, "denoiser_params": full_params,
        "built_params": count(denoiser), "text_encoder_params": text_params, "vae_params": count(vae),
        "weights_16bit_gib": {"denoiser": full_params * 2 / GIB, "text_encoders": sum(text_params.values()) * 2 / GIB,
                              "vae": count(vae) * 2 / GIB},
        "peak_rss_gib": peak_rss() / GIB, "peak_minus_baseline_gib": (peak_rss() - baseline) / GIB,
        "build_seconds": build_seconds, "step_seconds": seconds, "block_seconds": blocks,
        "step_time": "computed from built blocks" if "built_blocks" in spec else "measured",
        "text_tokens": {"mqd": routed.tokens, "plain": single.tokens, "diffusers_window": window},
        "mqd_overhead": seconds["mqd"] / seconds["plain"] - 1.0,
        "mqd_vs_diffusers_window": seconds["mqd"] / seconds["diffusers_window"] - 1.0,
    }


def joint_table(results: list[dict]) -> str:
    header = ("| family | denoiser params | text encoders params | 16-bit weights, all (GiB) | peak RSS (GiB) | rows "
              "| text tokens MQD / plain / window | MQD s/step | plain s/step | diffusers window s/step "
              "| MQD overhead | MQD vs window | step time |")
    lines = [header, "|" + "---|" * 13]
    for r in results:
        step, tokens = r["step_seconds"], r["text_tokens"]
        lines.append(f"| {r['label']} | {r['denoiser_params'] / 1e9:.3f} B | "
                     f"{sum(r['text_encoder_params'].values()) / 1e9:.3f} B | {sum(r['weights_16bit_gib'].values()):.2f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['rows']} | {tokens['mqd']} / {tokens['plain']} / "
                     f"{tokens['diffusers_window']} | {step['mqd']:.2f} | {step['plain']:.2f} | "
                     f"{step['diffusers_window']:.2f} | {100 * r['mqd_overhead']:+.1f}% | "
                     f"{100 * r['mqd_vs_diffusers_window']:+.1f}% | {r['step_time']} |")
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    header = ("| family | denoiser params | text encoders params | 16-bit weights, all (GiB) | peak RSS (GiB) "
              "| CFG+MQD s/step | distilled+MQD s/step | distilled/CFG | MQD overhead |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        weights = sum(r["weights_16bit_gib"].values())
        step = r["step_seconds"]
        rows.append(f"| {r['label']} | {r['denoiser_params'] / 1e9:.3f} B | "
                    f"{sum(r['text_encoder_params'].values()) / 1e9:.3f} B | {weights:.2f} | "
                    f"{r['peak_rss_gib']:.2f} | {step['cfg_mqd']:.2f} | {step['distilled_mqd']:.2f} | "
                    f"{r['distilled_vs_cfg']:.2f} | {100 * r['mqd_overhead']:+.1f}% |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = {**FAMILIES, **JOINT_FAMILIES}
    parser.add_argument("--families", default=",".join(known), help="comma list of %(default)s")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per variant, after one warm-up")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--built-blocks", type=int, default=None,
                        help="SD3/FLUX: build this many blocks of each kind and compute a step from them (the "
                             "median block); for sizes where the whole model is too slow here (FLUX: always 2)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one family in this process
    args = parser.parse_args(argv)
    if args.size % 16:
        parser.error("--size must be a multiple of 16 (8x VAE, 2x2 transformer patches)")
    dtype = getattr(torch, args.dtype)
    if args.one:
        if args.one in JOINT_FAMILIES:
            result = measure_joint(args.one, args.size, args.repeats, dtype, args.built_blocks)
        else:
            result = measure(args.one, args.size, args.repeats, dtype)
        print(json.dumps(result))
        return 0
    results = []
    for key in args.families.split(","):
        if key not in known:
            parser.error(f"unknown family {key!r}; known: {list(known)}")
        command = [sys.executable, "-m", "benchmark.families_size", "--one", key, "--size", str(args.size),
                   "--repeats", str(args.repeats), "--dtype", args.dtype]
        if args.built_blocks is not None:
            command += ["--built-blocks", str(args.built_blocks)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.stderr.write(done.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{key}: done", file=sys.stderr, flush=True)
    print(f"{args.size}x{args.size} px, {args.dtype} weights, {results[0]['threads']} CPU thread(s), "
          f"{REGIONS} MQD regions, median of {args.repeats} calls\n")
    cross = [r for r in results if r["family"] not in JOINT_FAMILIES]
    joint = [r for r in results if r["family"] in JOINT_FAMILIES]
    if cross:
        print(table(cross))
    if joint:
        print("\nJoint attention (SD3, FLUX): MQD vs one plain prompt (padding masked and cut, as the editor runs "
              "it) and vs diffusers' call over the whole padded text window\n")
        print(joint_table(joint))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
