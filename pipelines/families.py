"""Model families: what differs between SD-1/2, SDXL and PixArt-α, behind one small interface.

LayeredPipeline, BCG, tight masks, the memory and the editor never branch on the family; they ask the
pipeline's `ModelFamily`, which is bound to its components and answers four questions:

- text: how prompts become the denoiser's conditioning (`TextConditioning`: hidden states, a token mask
  for T5 encoders, a pooled embedding for SDXL) and how many tokens a prompt may have;
- denoiser: how one step is called (`predict`: extra size/resolution conditioning, the learned-sigma
  output split) and where a guidance-scale embedding joins its timestep features;
- MQD: which attention processors become regional, and the token grids of those layers;
- size: the native image size.

Every family works on the latent grid [B, C, H/f, W/f], which BCG blends and the memory stores. A family whose
denoiser reads another layout (FLUX packs 2x2 patches) packs and unpacks inside `predict`, and one with joint
text-image attention (SD3, FLUX) supplies its own regional processor through `routes` and `token_grids`.

The family is read from the loaded components' classes and configs (`family_class`), and before loading from
the folder's model_index.json (`check_model_index`), never from a model's name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
from diffusers.loaders.peft import PeftAdapterMixin

from .attention import RegionMaps, attention_grids, is_cross_attention, regional_attention
from .text_conditioning import TextConditioning


class UnsupportedModelError(ValueError):
    """A checkpoint of a family the editor cannot run; the message says which families it can."""


# --------------------------------------------------------------------------------------------- the interface
class ModelFamily:
    """What differs between model families, bound to one pipeline's components.

    Subclasses set `name` and `denoiser_name`, and implement `matches`, `encode_prompt` and `predict`.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # for messages and the README
    denoiser_name: ClassVar[str] = "unet"
    # The text encoders and tokenizers the family reads, as pipeline component names.
    text_components: ClassVar[tuple[tuple[str, str], ...]] = (("tokenizer", "text_encoder"),)
    # The samplers (pipelines.schedulers.SCHEDULERS names) the family's denoiser is trained for.
    schedulers: ClassVar[tuple[str, ...]] = ("ddim", "dpm++", "euler")
    # Editor settings this family starts from instead of the generic defaults (editor.EditSettings.for_family).
    default_settings: ClassVar[dict] = {}
    # Whether the denoiser embeds a guidance scale itself (FLUX-dev): guidance="distilled" without an adapter.
    native_guidance: ClassVar[bool] = False

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.check_components()

    @classmethod
    def matches(cls, pipeline) -> bool:
        raise NotImplementedError

    def check_components(self) -> None:
        missing = [name for pair in self.text_components for name in pair if getattr(self.pipeline, name) is None]
        if missing:
            raise UnsupportedModelError(f"a {self.label} model needs the components {missing}; the folder has none")

    # ------------------------------------------------------------------ denoiser and size
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_name)

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the denoiser was trained at."""
        side = int(self.denoiser.config.sample_size) * self.pipeline.vae_scale_factor
        return side, side

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this many pixels (the VAE's downsampling, times any patching)."""
        return self.pipeline.vae_scale_factor

    def set_timesteps(self, sampler, num_inference_steps: int, latent_size: tuple[int, int], device=None) -> None:
        """Give `sampler` its timesteps for an image whose latent grid is `latent_size`."""
        sampler.set_timesteps(num_inference_steps, device=device)

    def guidance_condition(self, scale: float, rows: int, device, dtype) -> torch.Tensor:
        """The guidance-scale input of a denoiser with `native_guidance` (handed to `predict` as timestep_cond)."""
        raise NotImplementedError(f"{self.label} does not embed a guidance scale itself")

    def pixel_size(self, latents: torch.Tensor) -> tuple[int, int]:
        """(height, width) in pixels of a latent grid."""
        factor = self.pipeline.vae_scale_factor
        return int(latents.shape[-2]) * factor, int(latents.shape[-1]) * factor

    def predict(self, latents: torch.Tensor, timestep, text: TextConditioning,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's prediction for `latents` [B, C, h, w] at `timestep`, in the scheduler's parameterisation.

        `timestep_cond` is the guidance-scale embedding of distilled guidance (added to the timestep features).
        """
        raise NotImplementedError

    @staticmethod
    def timestep_embedding(denoiser) -> torch.nn.Module:
        """The TimestepEmbedding a guidance-scale projection (`cond_proj`) joins."""
        return denoiser.time_embedding

    # ------------------------------------------------------------------ text
    @property
    def max_prompt_tokens(self) -> int:
        return min(int(getattr(self.pipeline, tok).model_max_length) for tok, _ in self.text_components)

    def prompt_token_count(self, text: str) -> int:
        """Tokens of `text` (with special tokens) in the longest reading of the family's tokenizers."""
        return max(len(getattr(self.pipeline, tok)(text, truncation=False, add_special_tokens=True)["input_ids"])
                   for tok, _ in self.text_components)

    def tokenize(self, tokenizer_name: str, texts: Sequence[str]):
        tokenizer = getattr(self.pipeline, tokenizer_name)
        return tokenizer(list(texts), padding="max_length", max_length=self.max_prompt_tokens, truncation=True,
                         return_tensors="pt")

    def encode_prompt(self, texts: Sequence[str]) -> TextConditioning:
        raise NotImplementedError

    def pack_text(self, text: TextConditioning) -> torch.Tensor:
        """A prompt's whole conditioning as one tensor [B, L', D'], so training batches (guidance distillation)
        index, concatenate and stack it like plain embeddings; `unpack_text` inverts it."""
        return text.embeds

    def unpack_text(self, packed: torch.Tensor) -> TextConditioning:
        return TextConditioning(packed)

    # ------------------------------------------------------------------ MQD
    @staticmethod
    def routes(processor_name: str) -> bool:
        """Whether MQD replaces this attention processor: the cross-attention layers (`attn2`)."""
        return is_cross_attention(processor_name)

    def token_grids(self, latent_size: tuple[int, int]) -> dict[int, tuple[int, int]]:
        """Query count -> (h, w) of every cross-attention layer's token grid, for a latent of `latent_size`."""
        return attention_grids(latent_size)

    def prepare_text(self, text: TextConditioning, regions: int) -> TextConditioning:
        """The conditioning the denoiser reads for `regions` prompts side by side (as is, but for joint attention)."""
        return text

    def attention_routing(self, maps: RegionMaps | None, text: TextConditioning, processor_class,
                          plain_rows: tuple[int, ...] = (), latent_size: tuple[int, int] | None = None):
        """The context in which the denoising loop runs: MQD's processors on the layers `routes` names while
        there are regions (`maps`), the model's own attention otherwise. `plain_rows` (CFG's unconditional row)
        need nothing here: the null prompt repeated per region already gives every query the plain prompt."""
        if maps is None:
            return nullcontext()
        return regional_attention(self.denoiser, maps, processor_class, self.routes)

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict:
        """What a saved project records to recognise the model it was made with (see `identity_mismatch`)."""
        config = {key: value for key, value in dict(self.denoiser.config).items() if not key.startswith("_")}
        config.pop("time_cond_proj_dim", None)  # set by a guidance adapter, not part of the checkpoint
        vae = self.pipeline.vae.config
        return {
            "family": self.name,
            "denoiser": type(self.denoiser).__name__,
            "architecture": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "latent": [int(vae.latent_channels), int(self.pipeline.vae_scale_factor), float(vae.scaling_factor)],
            "weights": weight_sample(self.denoiser),
        }


class StableDiffusion(ModelFamily):
    """SD-1.x/2.x (and the embedded model): one CLIP text encoder, a UNet with cross-attention."""

    name = "sd"
    label = "Stable Diffusion 1/2"

    @classmethod
    def matches(cls, pipeline) -> bool:
        unet = pipeline.unet
        return isinstance(unet, UNet2DConditionModel) and unet.config.addition_embed_type is None

    @torch.no_grad()
    def encode_prompt(self, texts: Sequence[str]) -> TextConditioning:
        encoder = self.pipeline.text_encoder
        hidden = encoder(self.tokenize("tokenizer", texts).input_ids.to(encoder.device))[0]
        return TextConditioning(hidden.to(dtype=parameter_dtype(self.denoiser)))

    def predict(self, latents, timestep, text, timestep_cond=None):
        return self.denoiser(latents, timestep, encoder_hidden_states=text.embeds, timestep_cond=timestep_cond).sample


class StableDiffusionXL(ModelFamily):
    """SDXL base: two CLIP text encoders (penultimate layers side by side), the second's pooled projection and
    the image size as added conditioning."""

    name = "sdxl"
    label = "Stable Diffusion XL"
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    @classmethod
    def matches(cls, pipeline) -> bool:
        unet = pipeline.unet
        return isinstance(unet, UNet2DConditionModel) and unet.config.addition_embed_type == "text_time"

    def check_components(self) -> None:
        if self.pipeline.text_encoder is None and self.pipeline.text_encoder_2 is not None:
            raise UnsupportedModelError("this is an SDXL refiner (one text encoder, aesthetic-score conditioning): "
                                        "it refines images and cannot paint layers; use an SDXL base model")
        super().check_components()

    @torch.no_grad()
    def encode_prompt(self, texts: Sequence[str]) -> TextConditioning:
        hidden, pooled = [], None
        for tokenizer_name, encoder_name in self.text_components:
            encoder = getattr(self.pipeline, encoder_name)
            out = encoder(self.tokenize(tokenizer_name, texts).input_ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL reads the penultimate layer of both encoders
            pooled = out[0]  # the second encoder's projected pooled output (text_embeds)
        dtype = parameter_dtype(self.denoiser)
        return TextConditioning(torch.cat(hidden, dim=-1).to(dtype=dtype), pooled=pooled.to(dtype=dtype))

    def pack_text(self, text: TextConditioning) -> torch.Tensor:
        """The pooled embedding as one more token row, zero-padded to the hidden width (1280 of 2048)."""
        pooled = torch.nn.functional.pad(text.pooled, (0, text.embeds.shape[-1] - text.pooled.shape[-1]))
        return torch.cat([text.embeds, pooled[:, None].to(text.embeds.dtype)], dim=1)

    def unpack_text(self, packed: torch.Tensor) -> TextConditioning:
        width = int(self.pipeline.text_encoder_2.config.projection_dim)
        return TextConditioning(packed[:, :-1], pooled=packed[:, -1, :width])

    def size_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """SDXL's size conditioning per row: (original h, w, crop top, left, target h, w); no crop, same size."""
        height, width = self.pixel_size(latents)
        ids = torch.tensor([[height, width, 0, 0, height, width]], device=latents.device, dtype=latents.dtype)
        return ids.expand(latents.shape[0], -1)

    def predict(self, latents, timestep, text, timestep_cond=None):
        added = {"text_embeds": text.pooled, "time_ids": self.size_ids(latents)}
        return self.denoiser(latents, timestep, encoder_hidden_states=text.embeds, timestep_cond=timestep_cond,
                             added_cond_kwargs=added).sample


class PixArtAlpha(ModelFamily):
    """PixArt-α: a diffusion transformer reading T5 text through cross-attention (with its token mask), with
    resolution and aspect-ratio conditioning at 1024 px, and a learned-sigma output (variance channels)."""

    name = "pixart-alpha"
    label = "PixArt-α"
    denoiser_name = "transformer"
    # PixArt-α was trained on T5 windows of 120 tokens (diffusers' PixArtAlphaPipeline max_sequence_length).
    MAX_TOKENS = 120

    def __init__(self, pipeline):
        super().__init__(pipeline)
        add_adapter_methods(self.denoiser)

    @classmethod
    def matches(cls, pipeline) -> bool:
        return isinstance(pipeline.transformer, PixArtTransformer2DModel)

    @property
    def max_prompt_tokens(self) -> int:
        return min(self.MAX_TOKENS, int(self.pipeline.tokenizer.model_max_length))

    @torch.no_grad()
    def encode_prompt(self, texts: Sequence[str]) -> TextConditioning:
        encoder = self.pipeline.text_encoder
        tokens = self.tokenize("tokenizer", texts)
        mask = tokens.attention_mask.to(encoder.device)
        hidden = encoder(tokens.input_ids.to(encoder.device), attention_mask=mask)[0]
        return TextConditioning(hidden.to(dtype=parameter_dtype(self.denoiser)), attention_mask=mask.bool())

    def pack_text(self, text: TextConditioning) -> torch.Tensor:
        """The token mask as one more channel (1 on real tokens)."""
        return torch.cat([text.embeds, text.attention_mask[..., None].to(text.embeds.dtype)], dim=-1)

    def unpack_text(self, packed: torch.Tensor) -> TextConditioning:
        return TextConditioning(packed[..., :-1], attention_mask=packed[..., -1] > 0.5)

    def size_conditioning(self, latents: torch.Tensor) -> dict:
        """Resolution and aspect ratio per row, for transformers trained with them (PixArt-α 1024 px)."""
        if not self.denoiser.use_additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        height, width = self.pixel_size(latents)
        rows, kwargs = latents.shape[0], {"device": latents.device, "dtype": latents.dtype}
        return {"resolution": torch.tensor([[height, width]], **kwargs).expand(rows, -1),
                "aspect_ratio": torch.tensor([[height / width]], **kwargs).expand(rows, -1)}

    def predict(self, latents, timestep, text, timestep_cond=None):
        timestep = torch.as_tensor(timestep, device=latents.device)
        timestep = timestep.reshape(-1).expand(latents.shape[0]) if timestep.numel() == 1 else timestep
        with timestep_condition(self.timestep_embedding(self.denoiser), timestep_cond):
            out = self.denoiser(latents, encoder_hidden_states=text.embeds, encoder_attention_mask=text.attention_mask,
                                timestep=timestep, added_cond_kwargs=self.size_conditioning(latents)).sample
        if out.shape[1] == 2 * latents.shape[1]:
            out = out[:, :latents.shape[1]]  # learned sigma: the deterministic samplers read the mean part only
        return out

    @staticmethod
    def timestep_embedding(denoiser) -> torch.nn.Module:
        return denoiser.adaln_single.emb.timestep_embedder

    def token_grids(self, latent_size: tuple[int, int]) -> dict[int, tuple[int, int]]:
        """One grid: the latent in patches (every block attends at the same resolution)."""
        patch = int(self.denoiser.config.patch_size)
        height, width = latent_size[0] // patch, latent_size[1] // patch
        return {height * width: (height, width)}


FAMILIES: tuple[type[ModelFamily], ...] = (StableDiffusion, StableDiffusionXL, PixArtAlpha)
# The denoiser classes (and their model_index.json slot) of the families above.
SUPPORTED_DENOISERS = {"UNet2DConditionModel": "unet", "PixArtTransformer2DModel": "transformer",
                       "SD3Transformer2DModel": "transformer", "FluxTransformer2DModel": "transformer"}


def all_families() -> tuple[type[ModelFamily], ...]:
    """Every family, the joint-attention ones (SD3, FLUX: pipelines.mmdit_families) included."""
    from .mmdit_families import MMDIT_FAMILIES  # they build on this module

    return FAMILIES + MMDIT_FAMILIES


def family_class(pipeline) -> type[ModelFamily]:
    """The family of a pipeline's loaded components (read from their classes and configs)."""
    denoisers = [name for name in ("unet", "transformer") if getattr(pipeline, name, None) is not None]
    if len(denoisers) != 1:
        raise UnsupportedModelError(f"a model needs exactly one denoiser, a unet or a transformer; found {denoisers}")
    for family in all_families():
        if family.matches(pipeline):
            return family
    denoiser = getattr(pipeline, denoisers[0])
    detail = f" (addition_embed_type={denoiser.config.addition_embed_type!r})" if denoisers == ["unet"] else ""
    raise UnsupportedModelError(f"{type(denoiser).__name__}{detail} is not a denoiser the editor can run; "
                                f"supported: {supported_families()}")


def supported_families() -> str:
    return ", ".join(family.label for family in all_families())


def check_model_index(folder: str | Path) -> None:
    """Refuse, before any weight is read, a diffusers folder whose denoiser the editor cannot run."""
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers model folder (no model_index.json)")
    index = json.loads(path.read_text())
    found = {name: entry[1] for name, entry in index.items()
             if name in ("unet", "transformer") and isinstance(entry, list) and len(entry) == 2 and entry[1]}
    if not found:
        raise UnsupportedModelError(f"{path} names no unet or transformer")
    for name, cls in found.items():
        if SUPPORTED_DENOISERS.get(cls) != name:
            pipeline = index.get("_class_name", "an unknown pipeline")
            raise UnsupportedModelError(f"{folder} is a {pipeline} with a {cls} {name}, which the editor cannot run "
                                        f"yet; supported: {supported_families()}")


PLAIN_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def parameter_dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's compute dtype. diffusers' `dtype` walks every submodule for casting hooks on each call (a
    visible share of a few-step edit); without those hooks the first parameter's dtype is the same answer, and a
    storage dtype that is not a plain float (layerwise casting keeps fp8) falls back to diffusers'."""
    dtype = next(model.parameters()).dtype
    return dtype if dtype in PLAIN_DTYPES else model.dtype


def timestep_embedding(denoiser) -> torch.nn.Module:
    """Where a guidance-scale projection joins `denoiser`'s timestep features, whatever its family."""
    if type(denoiser).__name__ in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
        raise UnsupportedModelError(
            f"guidance adapters are not trained for a {type(denoiser).__name__} yet: FLUX-dev embeds its own "
            "guidance scale (guidance='distilled' without an adapter); SD3 and FLUX-schnell run guidance='cfg'")
    family = PixArtAlpha if isinstance(denoiser, PixArtTransformer2DModel) else StableDiffusion
    return family.timestep_embedding(denoiser)


def output_layer(denoiser) -> torch.nn.Module:
    """The denoiser's last layer (a UNet's conv_out, a transformer's proj_out): a guidance head reads its input."""
    timestep_embedding(denoiser)  # the same families as guidance adapters
    return denoiser.proj_out if isinstance(denoiser, PixArtTransformer2DModel) else denoiser.conv_out


@contextmanager
def timestep_condition(embedding: torch.nn.Module, condition: torch.Tensor | None):
    """Hand `condition` to a TimestepEmbedding whose model does not pass one itself (PixArt's adaLN embedder):
    `TimestepEmbedding.forward(sample, condition)` adds `cond_proj(condition)` to the timestep features."""
    if condition is None:
        yield
        return

    def add_condition(module, args, kwargs):
        return args, {**kwargs, "condition": condition}

    handle = embedding.register_forward_pre_hook(add_condition, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


_ADAPTER_CLASSES: dict[type, type] = {}


def add_adapter_methods(model: torch.nn.Module) -> None:
    """Give `model` diffusers' LoRA adapter methods (add_adapter, load_lora_adapter, ...) if its class lacks them.

    diffusers 0.42's PixArtTransformer2DModel does not inherit PeftAdapterMixin, which its other transformers
    (SD3, FLUX) do and which works on any ModelMixin. The subclass keeps the class name, so configs and
    model_index.json entries written afterwards name the diffusers class.
    """
    base = type(model)
    if isinstance(model, PeftAdapterMixin):
        return
    if base not in _ADAPTER_CLASSES:
        _ADAPTER_CLASSES[base] = type(base.__name__, (base, PeftAdapterMixin), {"__module__": base.__module__})
    model.__class__ = _ADAPTER_CLASSES[base]


# --------------------------------------------------------------------------------------------- identity
WEIGHT_SAMPLES = 32  # weights compared between a project and the model opening it
# Relative tolerance of that comparison: a checkpoint loaded in float16 or bfloat16 rounds weights by < 0.4%.
WEIGHT_TOLERANCE = 1e-2


def weight_sample(model: torch.nn.Module, count: int = WEIGHT_SAMPLES) -> list[float]:
    """`count` weights spread over the model: from evenly spaced parameters, the largest of its first 256 values.

    Adapter weights (LoRA, a guidance projection) are skipped: they are not part of the checkpoint.
    """
    params = [p for name, p in model.named_parameters() if "lora_" not in name and "cond_proj" not in name]
    picks = [params[round(i * (len(params) - 1) / max(count - 1, 1))] for i in range(min(count, len(params)))]
    values = []
    for param in picks:
        head = param.detach().reshape(-1)[:256].float().cpu()
        values.append(float(head[head.abs().argmax()]))
    return values


def identity_mismatch(saved: dict, current: dict) -> str | None:
    """Why a project recorded with `saved` identity cannot be edited with the `current` model; None when it can."""
    if saved.get("family") != current["family"]:
        return f"it was made with a {saved.get('family')!r} model and this one is {current['family']!r}"
    for key, what in (("denoiser", "denoiser class"), ("architecture", "denoiser architecture"),
                      ("latent", "latent space (channels, scale, VAE scaling)")):
        if key in saved and saved[key] != current[key]:
            return f"its {what} differs ({saved[key]!r} vs {current[key]!r})"
    weights = saved.get("weights")
    if weights is not None:
        close = len(weights) == len(current["weights"]) and all(
            abs(a - b) <= WEIGHT_TOLERANCE * max(abs(a), abs(b)) + 1e-6 for a, b in zip(weights, current["weights"]))
        if not close:
            return "it was made with another checkpoint of the same architecture (its weights differ)"
    return None
